"""RL of the ideator: GRPO with LoRA (TRL + PEFT) on execution rewards, collapse metrics, anti-collapse options.

Modules: config (RLConfig), tiny (a local tokenizer and a tiny causal LM, no download), metrics (collapse
metrics of a group of ideas), scoring (rewards: offline nearest-executed-idea scorer, synthetic env, novelty
bonus), trainer (the GRPO run with per-step metrics, MLflow and checkpoints in the artifact store),
offline (train from an ``ideaforge export``), plots (report PNGs).
"""
