"""Contracts that cross a process boundary: Temporal payloads, env specs, campaign configs.

Everything here is a pydantic v2 model and must stay importable from workflow code: stdlib, pydantic and
ideaforge.names only.
Large things (diffs over a few KB, logs, zips, checkpoints) travel as ``ArtifactRef`` (claim-check).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ideaforge.names import NAME_RE, campaign_workflow_id

Direction = Literal["min", "max"]
ProviderKind = Literal["offline", "anthropic", "openai", "openai-compatible"]
Strategy = Literal["evolution", "best_of_n", "random"]
Schedule = Literal["sync", "steady"]
Origin = Literal["baseline", "explore", "exploit", "human", "confirm"]
IdeaStatus = Literal["ok", "failed"]
FailureCategory = Literal[
    "patch_failed",
    "protected_file_touched",
    "crashed",
    "timeout",
    "nan",
    "eval_failed",
    "implausible_metric",
    "output_limit",
    "llm_failed",
    "budget_exhausted",
    "preflight_failed",  # the patched code crashed in the CPU preflight on every attempt: never trained
    "cancelled",  # the idea workflow was cancelled (by hand, or with its campaign)
    "terminated",  # the idea workflow was terminated (by hand): it could not report a result
]


class Strict(BaseModel):
    """Base for contracts: unknown fields are errors, so typos in configs fail loudly."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- artifacts


class ArtifactRef(Strict):
    """A content-addressed object in the artifact store (file:// or s3://)."""

    uri: str
    sha256: str
    size: int


# --------------------------------------------------------------------------- research environments


class Resources(Strict):
    """What one experiment needs; decides the task queue it is scheduled on."""

    device: Literal["cpu", "gpu"] = "cpu"
    gpu_type: str | None = None
    count: int = Field(1, ge=1, le=64)
    time_limit_s: float = Field(600, gt=0)
    cpu_time_limit_s: float | None = None
    memory_limit_mb: int | None = None  # whole process tree (cgroup); None: 3/4 of the machine's memory
    max_output_mb: float = Field(20, gt=0)
    max_processes: int = Field(512, ge=8)  # whole process tree (pids cgroup + RLIMIT_NPROC of its own uid)
    max_write_mb: float = Field(8192, gt=0)  # bytes the attempt may write to its own directory
    max_checkpoint_mb: float | None = Field(None, gt=0)  # per checkpoint upload; None: max_write_mb
    heartbeat_timeout_s: float = Field(30, gt=0)
    # what one training run is expected to take (a wall-clock budget): the slot time a crash caught by the
    # preflight did not take; None: time_limit_s stands in for it (an upper bound)
    expected_train_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _gpu_needs_type(self) -> Resources:
        if self.device == "gpu" and not self.gpu_type:
            raise ValueError("resources.device = 'gpu' needs resources.gpu_type (e.g. 'h100')")
        return self

    @property
    def task_queue(self) -> str:
        return training_queue(self.device, self.gpu_type)


DeviceKind = Literal["cpu", "gpu"]


class DeviceTime(Strict):
    """Device time of experiments: devices held x wall seconds of training plus evaluation, summed over every
    attempt (crashed, preempted and retried ones too; an attempt whose worker died counts up to its last
    heartbeat). GPU experiments add to ``gpu_seconds``; CPU experiments add CPU slots held x seconds to
    ``cpu_slot_seconds``. Sums per idea, epoch and campaign are all made with ``+`` / ``total``."""

    gpu_seconds: float = Field(0.0, ge=0)
    cpu_slot_seconds: float = Field(0.0, ge=0)
    attempts: int = Field(0, ge=0)  # training attempts that held devices

    @classmethod
    def held(cls, kind: DeviceKind, devices: int, seconds: float, attempts: int = 1) -> DeviceTime:
        """One attempt that held ``devices`` devices of ``kind`` for ``seconds`` of wall time."""
        spent = max(0, devices) * max(0.0, seconds)
        if kind == "gpu":
            return cls(gpu_seconds=spent, attempts=attempts)
        return cls(cpu_slot_seconds=spent, attempts=attempts)

    @classmethod
    def total(cls, items: Iterable[DeviceTime | None]) -> DeviceTime:
        out = cls()
        for item in items:
            if item is not None:
                out = out + item
        return out

    def __add__(self, other: DeviceTime) -> DeviceTime:
        return DeviceTime(
            gpu_seconds=self.gpu_seconds + other.gpu_seconds,
            cpu_slot_seconds=self.cpu_slot_seconds + other.cpu_slot_seconds,
            attempts=self.attempts + other.attempts,
        )

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600

    @property
    def cpu_slot_hours(self) -> float:
        return self.cpu_slot_seconds / 3600

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The figures under the names MLflow shows (``gpu_seconds``, ``cpu_slot_seconds``, ``train_attempts``)."""
        return {
            f"{prefix}gpu_seconds": self.gpu_seconds,
            f"{prefix}cpu_slot_seconds": self.cpu_slot_seconds,
            f"{prefix}train_attempts": float(self.attempts),
        }

    def text(self) -> str:
        """``1.25 GPU-h, 0.02 CPU-slot-h (3 attempts)``: the kinds that were used, for humans."""
        parts = []
        if self.gpu_seconds or not self.cpu_slot_seconds:
            parts.append(f"{self.gpu_hours:.3g} GPU-h")
        if self.cpu_slot_seconds:
            parts.append(f"{self.cpu_slot_hours:.3g} CPU-slot-h")
        return ", ".join(parts) + f" ({self.attempts} training attempt{'s' if self.attempts != 1 else ''})"


def training_queue(device: str, gpu_type: str | None = None) -> str:
    """Task queue name for a training worker: ``cpu-train`` or ``gpu-<type>``."""
    return "cpu-train" if device == "cpu" else f"gpu-{(gpu_type or 'any').lower()}"


class SearchReplace(Strict):
    """One exact-text edit of one file (also the offline implementer's edit format)."""

    file: str
    search: str
    replace: str


class Knob(Strict):
    """A hyperparameter the offline ideator may change: ``pattern`` is a regex whose group 1 is the value."""

    name: str
    file: str
    pattern: str
    values: list[float | int | str]
    text: str = "Set {name} to {value}."


class Variant(Strict):
    """A code variant the offline ideator may propose: a description plus exact edits."""

    name: str
    title: str
    text: str
    edits: list[SearchReplace]
    conflicts: list[str] = Field(default_factory=list)


class OfflineCatalogue(Strict):
    knobs: list[Knob] = Field(default_factory=list)
    variants: list[Variant] = Field(default_factory=list)


class Reward(Strict):
    """Reward for RL export: improvement over the baseline, scaled; failures get ``failure_reward``."""

    scale: float = 1.0
    failure_reward: float = -1.0
    clip: float = 10.0


class PreflightSpec(Strict):
    """An env's cheap CPU check of patched code before it is queued for training (``[preflight]`` in env.toml).

    The changed Python files are compiled first. Then ``command`` (default: the env's ``run_command``) runs in
    the training sandbox on the CPU with the variables and prepared data of ``profile`` plus ``env``, under
    ``time_limit_s``. It passes when it exits 0 or reports training step ``stop_at_step`` (the tree is then
    stopped); it fails when it exits non-zero on its own. Running out of time or memory is inconclusive: the
    code goes on to training."""

    profile: str = "smoke"
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    stop_at_step: int | None = Field(None, ge=1)
    time_limit_s: float = Field(120, gt=0, le=3600)
    memory_limit_mb: int = Field(4096, ge=64)


class EnvSpec(Strict):
    """A research environment: ``research_envs/<name>/env.toml`` plus ``baseline/``."""

    name: str
    description: str
    editable_files: list[str]
    protected_files: list[str]
    run_command: list[str]
    eval_command: list[str]
    # the model server: a protected script that loads the trained model with the EDITABLE code and answers the
    # evaluator over a channel, in a sandbox of its own (so editable code never runs where the metric is made)
    serve_command: list[str] | None = None
    # how many model servers the evaluator gets, each a fresh process (e.g. one that never sees the scored inputs)
    serve_instances: int = Field(1, ge=1, le=4)
    prepare_command: list[str] | None = None
    metric: str
    direction: Direction
    plausible_range: tuple[float, float]
    resources: Resources = Field(default_factory=Resources)
    profiles: dict[str, dict[str, str]] = Field(default_factory=lambda: {"default": {}})
    resources_by_profile: dict[str, dict[str, Any]] = Field(default_factory=dict)
    reward: Reward = Field(default_factory=Reward)
    checkpointing: bool = False
    seed_noise: float | None = None
    # names of host environment variables whose values are read-only paths the env's commands need (local
    # model weights under HF_HOME, a tiktoken cache, raw data files): passed through, bound read-only
    host_paths: list[str] = Field(default_factory=list)
    # advice for the ideator (what kind of ideas fit this env, what must not change), shown in its prompt
    ideator_guidance: str = ""
    # what the hidden evaluator reads, rebuilds and checks (the implementer sees this, not the evaluator's code)
    evaluator_interface: str = ""
    # protected files training never sees (held-out data shipped with the env, the script that draws the
    # validation set): removed from the training tree, present for prepare and evaluation only
    eval_only_files: list[str] = Field(default_factory=list)
    offline: OfflineCatalogue = Field(default_factory=OfflineCatalogue)
    # the CPU check before training; None: the changed files are only compiled
    preflight: PreflightSpec | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"env name {v!r} must match {NAME_RE.pattern}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EnvSpec:
        overlap = set(self.editable_files) & set(self.protected_files)
        if overlap:
            raise ValueError(f"files both editable and protected: {sorted(overlap)}")
        if "default" not in self.profiles:
            raise ValueError("profiles must define 'default'")
        lo, hi = self.plausible_range
        if not lo < hi:
            raise ValueError(
                f"plausible_range must be (low, high) with low < high, got {self.plausible_range}"
            )
        hidden = set(self.eval_only_files) - set(self.protected_files)
        if hidden:
            raise ValueError(f"eval_only_files must also be protected_files: {sorted(hidden)}")
        if not self.run_command or not self.eval_command:
            raise ValueError("run_command and eval_command must not be empty")
        if self.serve_command is not None:
            script = self.serve_command[1] if len(self.serve_command) >= 2 else None
            if self.serve_command[:1] != ["{python}"] or script not in self.protected_files:
                raise ValueError(
                    "serve_command must be ['{python}', 'script.py', ...] with script.py a protected file: "
                    f"{self.serve_command}"
                )
        for profile in self.resources_by_profile:
            if profile not in self.profiles:
                raise ValueError(f"resources_by_profile names unknown profile {profile!r}")
            self.resources_for(profile)
        if self.preflight is not None:
            pf = self.preflight
            if pf.profile not in self.profiles:
                raise ValueError(f"preflight.profile {pf.profile!r} is not a profile: {sorted(self.profiles)}")
            if self.resources_for(pf.profile).device != "cpu":
                raise ValueError(f"preflight.profile {pf.profile!r} must run on the CPU (resources_by_profile)")
            if pf.command is not None and (not pf.command or pf.command[0] != "{python}"):
                raise ValueError(f"preflight.command must start with '{{python}}': {pf.command}")
        return self

    def resources_for(self, profile: str) -> Resources:
        """The resources of ``profile``: ``resources`` with that profile's overrides (e.g. count, time limit)."""
        over = self.resources_by_profile.get(profile)
        if not over:
            return self.resources
        return Resources.model_validate({**self.resources.model_dump(), **over})

    def better(self, a: float, b: float) -> bool:
        """True when metric ``a`` is strictly better than ``b``."""
        return a < b if self.direction == "min" else a > b


# --------------------------------------------------------------------------- LLM providers and usage


ThinkingMode = Literal["off", "budget", "adaptive"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ProviderConfig(Strict):
    """Which model proposes ideas or diffs, and how it is called. Keys come only from the environment.

    Token budgets: ``max_tokens`` is the budget of the visible answer. Thinking/reasoning tokens come on top:
    Anthropic ``thinking="budget"`` sends ``thinking={"type": "enabled", "budget_tokens": thinking_budget}``
    with ``max_tokens = thinking_budget + max_tokens`` (the paper: 1.5-3k thinking, 8-10k answer, temperature
    1); ``thinking="adaptive"`` lets the model decide, with the same headroom. OpenAI reasoning models (o1/o3/
    o4/gpt-5, or any model given ``reasoning_effort``) count reasoning in ``max_completion_tokens``, so they get
    ``max_tokens + reasoning headroom`` (``thinking_budget``, else a default that grows with the effort).
    """

    kind: ProviderKind = "offline"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    # None: the provider's default (1.0 for Anthropic and OpenAI); thinking/reasoning models take only that
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int = Field(8192, ge=16, le=128_000)
    thinking: ThinkingMode = "off"
    thinking_budget: int | None = Field(None, ge=1024, le=64_000)
    reasoning_effort: ReasoningEffort | None = None
    prompt_cache: bool = True  # mark the stable prompt prefix (system prompt) cacheable where the API needs it
    ideas_per_call: int = Field(10, ge=1, le=50)  # ideator: ideas asked for in one completion
    concurrency: int = Field(4, ge=1, le=64)
    requests_per_minute: float | None = Field(None, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    timeout_s: float = Field(600, gt=0)  # per request: 10k tokens of thinking + answer take minutes
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    price_cached_in_per_mtok: float | None = None  # cache reads (default: the table's, else 10% of input)

    @model_validator(mode="after")
    def _thinking_consistent(self) -> ProviderConfig:
        if self.thinking != "off" and self.kind != "anthropic":
            raise ValueError(
                f"thinking={self.thinking!r} is an Anthropic setting; for {self.kind} use reasoning_effort"
            )
        if self.thinking != "off" and self.temperature not in (None, 1.0):
            raise ValueError("thinking needs temperature 1 (leave temperature unset)")
        if self.kind == "anthropic" and self.reasoning_effort in ("none", "minimal"):
            raise ValueError("Anthropic effort is one of low, medium, high, xhigh, max")
        return self


USAGE_COUNTS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cancelled_calls",
    "cancelled_tokens",
    "truncated_calls",
)


class Usage(Strict):
    """Tokens and cost of LLM calls. ``input_tokens`` counts every prompt token (cached ones included),
    ``output_tokens`` every generated one (reasoning included); the other counts break them down.
    ``cancelled_calls`` were abandoned before their reply (a parallel sample cancelled once another won):
    their tokens are estimated, since the provider bills them anyway."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # read from the provider's prompt cache (billed at the cache price)
    cache_write_tokens: int = 0  # written to the cache (Anthropic bills them at 1.25x input)
    reasoning_tokens: int = 0  # thinking / reasoning tokens inside output_tokens
    cancelled_calls: int = 0
    cancelled_tokens: int = 0  # estimated input + output tokens of the cancelled calls (inside the counts above)
    truncated_calls: int = 0  # replies cut by the token limit (finish_reason length / max_tokens)
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        counts = {k: getattr(self, k) + getattr(other, k) for k in USAGE_COUNTS}
        return Usage(**counts, cost_usd=self.cost_usd + other.cost_usd)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Every count and the cost as floats (MLflow metrics: ``calls`` is named ``llm_calls``)."""
        out = {f"{prefix}{'llm_calls' if k == 'calls' else k}": float(getattr(self, k)) for k in USAGE_COUNTS}
        out[f"{prefix}cost_usd"] = self.cost_usd
        return out


# --------------------------------------------------------------------------- campaign config


class SearchConfig(Strict):
    """The search policy (workflows/selection.py): how much to exploit, which parents, how to explore."""

    strategy: Strategy = "evolution"
    exploit_start: float = Field(0.3, ge=0, le=1)
    exploit_end: float = Field(0.8, ge=0, le=1)
    parents: int = Field(4, ge=1, le=64)
    explore_floor: float = Field(0.2, ge=0, le=1)  # at least this share of ideas explore from the baseline
    crossover: float = Field(0.2, ge=0, le=1)  # share of exploit ideas that combine two good parents
    ucb_c: float = Field(1.0, ge=0, le=10)  # exploration bonus of the parent rule, in units of the seed noise
    max_changes: int = Field(3, ge=1, le=8)  # an explore idea of the offline ideator stacks 1..max_changes changes
    population: int = Field(32, ge=2, le=256)  # parent candidates kept in workflow state (bounded)


class CampaignConfig(Strict):
    """What ``ideaforge start`` reads from a TOML file and/or flags."""

    name: str
    env: str
    epochs: int = Field(2, ge=1, le=1000)
    ideas_per_epoch: int = Field(4, ge=1, le=1000)
    seed: int = 0
    profile: str = "default"
    ideator: ProviderConfig = Field(default_factory=ProviderConfig)
    implementer: ProviderConfig | None = None
    search: SearchConfig = Field(default_factory=SearchConfig)
    max_revisions: int = Field(2, ge=0, le=2)
    parallel_samples: int = Field(1, ge=1, le=8)
    run_baseline: bool = True
    confirm_top_k: int = Field(0, ge=0, le=16)
    confirm_seeds: int = Field(2, ge=1, le=16)
    budget_usd: float | None = Field(None, gt=0)
    # GPU-hours of training + evaluation (every attempt counted): once the finished ideas have used them, no
    # new idea is planned (ideas in flight finish, so the total can pass it by up to their runs)
    budget_gpu_hours: float | None = Field(None, gt=0)
    preflight: bool = True  # check patched code on the CPU (env [preflight]) before it takes a training slot
    # scheduling: "steady" starts an idea the moment a training slot frees; "sync" is the paper's generations
    schedule: Schedule = "steady"
    slots: int | None = Field(None, ge=1, le=4096)  # training slots to keep busy (default: the worker's)
    ahead: int | None = Field(None, ge=0, le=256)  # proposals implemented and waiting (default: max(1, slots/4))
    ideate_batch: int = Field(16, ge=1, le=256)  # most ideas per ideate call in steady mode (the deficit)
    # how often a campaign asks the server about ideas it re-attached (after a continue-as-new or a restart):
    # it holds no handle on them, so one terminated by hand would otherwise be awaited forever
    check_in_flight_s: float = Field(60.0, ge=0.5, le=3600)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"campaign name {v!r} must be lowercase letters, digits, '-' or '_' (max 63)")
        return v

    @property
    def implementer_provider(self) -> ProviderConfig:
        return self.implementer or self.ideator

    @property
    def workflow_id(self) -> str:
        return campaign_workflow_id(self.name)


# --------------------------------------------------------------------------- ideas and results


class Mutation(Strict):
    """Machine-readable part of an offline idea: a knob value or a variant name."""

    op: str
    value: float | int | str | None = None


class Idea(Strict):
    idea_id: str
    epoch: int
    index: int
    title: str
    text: str
    origin: Origin = "explore"
    parent_ids: list[str] = Field(default_factory=list)
    recipe: list[Mutation] | None = None
    seed: int = 0
    code_from: str | None = None  # confirm runs re-use the code of this idea


class IdeaSummary(Strict):
    """Compact record of an executed idea kept in campaign state (for selection, dedup and prompts)."""

    idea_id: str
    epoch: int
    title: str
    text: str
    origin: Origin
    parent_ids: list[str] = Field(default_factory=list)
    recipe: list[Mutation] | None = None
    status: IdeaStatus
    category: FailureCategory | None = None
    metric: float | None = None
    reward: float | None = None
    seed: int = 0
    code: ArtifactRef | None = None
    diff: ArtifactRef | None = None
    confirmed_metrics: list[float] = Field(default_factory=list)
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # training + eval, every attempt
    preflight: PreflightCost | None = None

    @classmethod
    def of(cls, idea: Idea, status: IdeaStatus, **result: Any) -> IdeaSummary:
        """The summary of ``idea`` (its text capped at 4,000 characters) with its result fields."""
        return cls(
            idea_id=idea.idea_id,
            epoch=idea.epoch,
            title=idea.title,
            text=idea.text[:4000],
            origin=idea.origin,
            parent_ids=idea.parent_ids,
            recipe=idea.recipe,
            seed=idea.seed,
            status=status,
            **result,
        )


class PreflightCost(Strict):
    """What the CPU preflight cost one idea and the training slot time it kept free (sums over its attempts)."""

    runs: int = 0
    failures: int = 0  # attempts whose patched code crashed in the preflight (each went back for revision)
    inconclusive: int = 0  # out of time or memory on the CPU: trained anyway
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # slot time not spent on crashing code: failures x the env's expected training time (or time limit)
    saved_train_s: float = 0.0
    saved_device_s: float = 0.0  # saved_train_s x the devices a run holds (GPU-seconds on a GPU env)
    saved_basis: Literal["expected_train_s", "time_limit_s"] | None = None

    def __add__(self, other: PreflightCost) -> PreflightCost:
        return PreflightCost(
            runs=self.runs + other.runs,
            failures=self.failures + other.failures,
            inconclusive=self.inconclusive + other.inconclusive,
            wall_s=self.wall_s + other.wall_s,
            cpu_s=self.cpu_s + other.cpu_s,
            saved_train_s=self.saved_train_s + other.saved_train_s,
            saved_device_s=self.saved_device_s + other.saved_device_s,
            saved_basis=other.saved_basis or self.saved_basis,
        )


class CurvePoint(Strict):
    step: int
    value: float
    key: str = "train_loss"


class Progress(Strict):
    """Heartbeat details of a running experiment (come back as dicts: re-validate)."""

    step: int = 0
    loss: float | None = None
    elapsed_s: float = 0.0
    checkpoint: ArtifactRef | None = None
    checkpoint_step: int | None = None
    # device time of every attempt of this experiment so far, this one up to this heartbeat: a retry starts
    # from it, so an attempt whose worker died is counted up to its last heartbeat
    device_time: DeviceTime = Field(default_factory=DeviceTime)
    # the curve and train log of the attempts so far up to the checkpoint (an AttemptHistory in the store): an
    # attempt resumed from the checkpoint reports the whole run, not only the steps it trained itself
    history: ArtifactRef | None = None


class AttemptHistory(Strict):
    """What earlier attempts of one experiment trained up to a checkpoint: carried into the attempt resumed
    from it (another worker, often another host), so its curve and log cover the run from step 1."""

    step: int  # the checkpoint's step: points after it were trained again by the resumed attempt
    curve: list[CurvePoint] = Field(default_factory=list)
    log: str = ""  # the train log up to the checkpoint (head and tail when long)


# --------------------------------------------------------------------------- activity payloads


class IdeateRequest(Strict):
    campaign: str
    env: str
    epoch: int
    n: int
    seed: int
    provider: ProviderConfig
    strategy: Strategy = "evolution"
    exploit_share: float = 0.0
    parents: list[IdeaSummary] = Field(default_factory=list)
    archive: list[IdeaSummary] = Field(default_factory=list)
    baseline_metric: float | None = None
    human_ideas: list[str] = Field(default_factory=list)
    # what the campaign may still spend on LLM calls (None: no cap); the ideator stops before a call past it
    budget_left_usd: float | None = None
    # steady-state campaigns: the policy's plan per idea, bounded context, the full archive by reference
    plan: list[IdeaPlan] = Field(default_factory=list)
    n_planned: int | None = None  # ideas planned before this batch: seeds the offline ideator (replayable)
    archive_ref: ArtifactRef | None = None  # head of the archive chunks in the store (loaded by the activity)
    in_flight: list[Idea] = Field(default_factory=list)  # running ideas: not to be proposed again
    parent_stats: dict[str, ParentStats] = Field(default_factory=dict)
    inspirations: list[IdeaSummary] = Field(default_factory=list)
    noise: float | None = None  # seed noise of the metric (env.toml seed_noise)
    max_changes: int = Field(3, ge=1, le=8)  # most changes one explore idea stacks (offline ideator)


class IdeaPlan(Strict):
    """What the search policy asks of one idea: no parent = explore, one = improve it, two = combine them."""

    parent_ids: list[str] = Field(default_factory=list, max_length=2)


class ParentStats(Strict):
    """What the ideator is told about a parent: its delta against the baseline and how its children did."""

    delta: float | None = None  # improvement over the baseline in the env's direction (positive = better)
    children: int = 0  # children executed or in flight
    child_deltas: list[float | None] = Field(default_factory=list)  # the last few; None = the child failed


class IdeateResult(Strict):
    ideas: list[Idea]
    usage: Usage = Field(default_factory=Usage)
    rejected_duplicates: int = 0
    errors: list[str] = Field(default_factory=list)
    transcript: ArtifactRef | None = None


class SampleAttempt(Strict):
    """One failed sample of an implement round: its reply (stored, by reference) and its own error."""

    reply: ArtifactRef | None = None
    error: str
    category: FailureCategory | None = None


class ImplementRequest(Strict):
    """One implement round. A revision carries the previous round's failed samples (``previous_samples``,
    each reply paired with its own error) or, for a failure found after the change applied (a preflight),
    the applied diff and its error (``previous_diff``/``previous_error``)."""

    campaign: str
    env: str
    idea: Idea
    provider: ProviderConfig
    revision: int = 0
    parallel_samples: int = 1
    previous_diff: ArtifactRef | None = None
    previous_error: str | None = None
    previous_samples: list[SampleAttempt] = Field(default_factory=list)
    previous_category: FailureCategory | None = None  # preflight_failed: the diff applied but crashed on CPU
    parent_diff: ArtifactRef | None = None
    # what the campaign may still spend on LLM calls (None: no cap); a call whose worst case does not fit is
    # refused before it starts and the round ends with category ``budget_exhausted``
    budget_left_usd: float | None = None


class Implementation(Strict):
    """Result of one implement attempt: a diff that applies, or the reason it does not (``samples``: every
    failed sample's reply and error, fed back on the next revision)."""

    diff: ArtifactRef | None = None
    applies: bool = False
    error: str | None = None
    category: FailureCategory | None = None
    touched_files: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    transcript: ArtifactRef | None = None
    samples: list[SampleAttempt] = Field(default_factory=list)


class PackageRequest(Strict):
    env: str
    diff: ArtifactRef | None = None


class Package(Strict):
    """The patched tree, packed and stored by content."""

    # results recorded before `files` (a count nobody read) was dropped still carry it: ignore it, so the
    # histories of campaigns in flight keep replaying
    model_config = ConfigDict(extra="ignore")

    code: ArtifactRef


class PreflightRequest(Strict):
    campaign: str
    idea_id: str
    env: str
    code: ArtifactRef
    profile: str = "default"  # the training profile: its expected time is what a caught crash saves


class PreflightResult(Strict):
    """How the preflight of one package went; ``error`` is bounded and free of host paths."""

    status: Literal["passed", "failed", "inconclusive"]
    stage: Literal["compile", "run"] | None = None  # where it failed or stopped
    error: str | None = None
    checked_files: list[str] = Field(default_factory=list)
    cost: PreflightCost = Field(default_factory=PreflightCost)


class RunRequest(Strict):
    campaign: str
    idea_id: str
    env: str
    code: ArtifactRef
    profile: str = "default"
    seed: int = 0


class RunResult(Strict):
    status: IdeaStatus
    category: FailureCategory | None = None
    metric: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    curve: list[CurvePoint] = Field(default_factory=list)
    log: ArtifactRef | None = None
    wall_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    resumed_from_step: int | None = None
    # True when the worker ran generated code without the sandbox (IDEAFORGE_UNSAFE_NO_SANDBOX=1): the score
    # may be forged and is tagged `unsafe` wherever it is shown
    unsafe: bool = False
    worker: str | None = None
    device: str | None = None
    started_at: float = 0.0  # unix time the activity attempt began (orchestration benchmarks)
    finished_at: float = 0.0
    queued_s: float = 0.0  # time the attempt waited in the task queue for a free training slot
    devices: int = 0  # devices (GPUs, or CPU slots) this attempt held
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # every attempt, this one included


class IdeaInput(Strict):
    campaign: str
    await_baseline: bool = False  # hold the record until the campaign signals the baseline metric
    spec: EnvSpec
    idea: Idea
    profile: str = "default"
    implementer: ProviderConfig = Field(default_factory=ProviderConfig)
    max_revisions: int = 2
    parallel_samples: int = 1
    parent_diff: ArtifactRef | None = None
    # the campaign's LLM budget left when the idea started (None: no cap); each implement round gets what
    # is left of it after this idea's own earlier rounds
    budget_left_usd: float | None = None
    reuse_code: ArtifactRef | None = None
    reuse_diff: ArtifactRef | None = None
    epoch_run_id: str | None = None
    experiment: str
    baseline_metric: float | None = None
    preflight: bool = True  # check patched code on the CPU before it is queued for training


class IdeaOutcome(Strict):
    summary: IdeaSummary
    revisions: int = 0
    usage: Usage = Field(default_factory=Usage)
    mlflow_run_id: str | None = None
    run: RunResult | None = None
    error: str | None = None
    orchestration_s: float = 0.0
    preflight: PreflightCost | None = None


class IdeaDone(Strict):
    """What a finished IdeaWorkflow signals to its campaign (bounded: no curve, no log)."""

    summary: IdeaSummary
    revisions: int = 0
    usage: Usage = Field(default_factory=Usage)
    mlflow_run_id: str | None = None
    error: str | None = None


def ended_category(how: str) -> FailureCategory:
    """The failure category of an idea workflow that closed without a result, from how it closed
    (a workflow execution status name: ``terminated``, ``canceled``, ``timed_out``, ``failed``)."""
    return {"terminated": "terminated", "canceled": "cancelled", "timed_out": "timeout"}.get(how.lower(), "crashed")


class IdeaResults(Strict):
    """Ideas that closed while their campaign was not listening: results, or why there is none."""

    done: list[IdeaDone] = Field(default_factory=list)
    ended: dict[str, str] = Field(default_factory=dict)  # idea id -> how it ended without a result
    categories: dict[str, FailureCategory] = Field(default_factory=dict)  # idea id -> failure category (ended)


class RecordIdeaRequest(Strict):
    experiment: str
    campaign: str
    epoch_run_id: str | None
    idea: Idea
    outcome: IdeaOutcome
    workflow_id: str
    run_id: str
    env: str
    profile: str = "default"
    transcript: ArtifactRef | None = None  # the implementer's transcript, uploaded with the idea run


class RecordEpochRequest(Strict):
    experiment: str
    campaign: str
    env: str
    epoch: int
    workflow_id: str
    config: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, float] | None = None
    run_id: str | None = None


class RecordResult(Strict):
    run_id: str
    experiment_id: str


class SaveStateRequest(Strict):
    """Save the campaign state (a CampaignInput as JSON); with ``flush``, first append its ``recent`` ideas to
    the archive as one chunk after its ``archive_head``."""

    campaign: str
    state_json: str
    flush: bool = False


class SaveStateResult(Strict):
    head: ArtifactRef | None = None  # the new head of the archive chunks


class ArchiveChunk(Strict):
    """A run of completed ideas in the store, linked to the chunk before it (the archive is the chain)."""

    prev: ArtifactRef | None = None
    ideas: list[IdeaSummary]


# --------------------------------------------------------------------------- workflow state


class EpochTally(Strict):
    """An epoch being planned or still running: ``ideas_per_epoch`` ideas, one MLflow epoch run."""

    epoch: int
    run_id: str | None = None
    planned: int = 0
    done: int = 0
    ok: int = 0
    closed: bool = False  # no more ideas will be planned for it
    best: float | None = None
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # of its finished ideas


class CampaignState(Strict):
    """Carried across continue-as-new and stored after every epoch so ``resume`` can restart from it.

    Bounded whatever the campaign size: completed ideas go to the artifact store in chunks (``archive_head``);
    the state keeps counters, the baseline, a bounded population of parent candidates, the ideas completed
    since the last flush (``recent``) and the ideas in flight.
    """

    next_epoch: int = 0  # epochs completed
    archive: list[IdeaSummary] = Field(default_factory=list)  # never carried: filled by load_saved_state
    archive_head: ArtifactRef | None = None
    recent: list[IdeaSummary] = Field(default_factory=list)
    population: list[IdeaSummary] = Field(default_factory=list)
    children: dict[str, list[float | None]] = Field(default_factory=dict)  # population id -> last child deltas
    n_children: dict[str, int] = Field(default_factory=dict)  # population id -> children finished
    baseline_metric: float | None = None
    baseline_planned: bool = False
    baseline_done: bool = False  # the baseline finished (ok or not): ideas waiting for it can be rewarded
    baseline_sent: bool = False  # ideas in flight have been told the baseline metric
    usage: Usage = Field(default_factory=Usage)
    pending_human_ideas: list[str] = Field(default_factory=list)
    paused: bool = False
    budget_exhausted: bool = False
    stopped_reason: str | None = None  # why no more ideas are planned (a budget), None while planning goes on
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # of every finished idea (confirm runs too)
    epoch_bests: list[float | None] = Field(default_factory=list)
    slots: int | None = None
    n_planned: int = 0
    plan_epoch: int = 0
    epochs_open: list[EpochTally] = Field(default_factory=list)
    in_flight: dict[str, Idea] = Field(default_factory=dict)
    ideas_done: int = 0
    ideas_ok: int = 0
    confirm_planned: bool = False
    notes: list[str] = Field(default_factory=list)  # the last ideation shortfalls and errors (bounded)


class CampaignInput(Strict):
    config: CampaignConfig
    state: CampaignState = Field(default_factory=CampaignState)


class CampaignStatus(Strict):
    name: str
    env: str
    phase: str
    epoch: int
    epochs: int
    paused: bool
    ideas_done: int
    ideas_ok: int
    ideas_failed: int
    ideas_running: int
    best_metric: float | None
    best_idea: str | None
    baseline_metric: float | None
    direction: Direction | None = None
    usage: Usage = Field(default_factory=Usage)
    epoch_bests: list[float | None] = Field(default_factory=list)
    schedule: Schedule = "steady"
    slots: int = 0
    ideas_planned: int = 0
    in_flight: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # of the finished ideas
    budget_gpu_hours: float | None = None
    budget_usd: float | None = None
    stopped_reason: str | None = None


class CampaignResult(Strict):
    """The end of a campaign. ``archive`` is the bounded population (the best ideas, the baseline, the confirm
    re-runs); every executed idea is in the store under ``archive_ref`` (see ``load_archive``)."""

    name: str
    epochs_completed: int
    best: IdeaSummary | None
    baseline_metric: float | None
    archive: list[IdeaSummary]
    usage: Usage
    stopped_reason: str = "completed"
    ideas_done: int = 0
    archive_ref: ArtifactRef | None = None
    device_time: DeviceTime = Field(default_factory=DeviceTime)


# --------------------------------------------------------------------------- RL of the ideator


class RLConfig(Strict):
    """One RL run's settings (offline, or the trainer side of an RL campaign)."""

    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    steps: int = Field(30, ge=1)
    num_generations: int = Field(8, ge=2, description="group size: ideas sampled per prompt")
    prompts_per_step: int = Field(1, ge=1)
    max_completion_length: int = Field(16, ge=1)
    learning_rate: float = Field(5e-3, gt=0)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient against the reference policy")
    lora: bool = True
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    novelty_weight: float = Field(
        0.0, ge=0, description="anti-collapse: weight of the novelty bonus; 0 = plain GRPO"
    )
    group_reward: Literal["raw", "best"] = Field(
        "raw", description="anti-collapse: 'best' trains on 1 for each group's best idea(s), 0 for the rest"
    )
    gradient_checkpointing: bool = False
    seed: int = 0


class StepMetrics(Strict):
    """The collapse metrics of one RL step's group of ideas (``ideaforge.rl.metrics.collapse_metrics``)."""

    mean_reward: float
    max_reward: float
    distinct_ideas: int
    distinct_fraction: float
    semantic_diversity: float
    category_entropy: float
    reply_length: float
    reasoning_length: float
    execution_rate: float
    n: int


class RLCampaignConfig(Strict):
    """An online RL campaign: sample a group of ideas from the served ideator, execute them, GRPO, reload.

    ``model_path`` is the base model's local folder and ``adapter_root`` the folder adapters are unpacked into
    for the server: both must be readable under the same paths by the ``rl`` queue's worker and the server.
    """

    name: str
    env: str
    rl: RLConfig
    model_path: str
    server_url: str = "http://127.0.0.1:8000/v1"  # OpenAI-compatible base URL of the served ideator
    served_model: str = "base"  # the server's name for the base model (vLLM ``--served-model-name``)
    adapter_root: str | None = None  # default: IDEAFORGE_HOME/rl/adapters on the rl worker
    reply_format: Literal["json", "text"] = "json"  # json: the ideator's JSON; text: the reply is the idea
    implementer: ProviderConfig = Field(default_factory=ProviderConfig)
    profile: str = "default"
    max_revisions: int = Field(2, ge=0, le=2)
    seed: int = 0
    trainer_heartbeat_s: int = Field(120, ge=2, le=3600)  # a dead trainer's step is retried after this
    steps_per_run: int = Field(10, ge=1, le=1000)  # steps per workflow run before a continue-as-new

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"RL campaign name {v!r} must be lowercase letters, digits, '-' or '_' (max 63)")
        return v

    @model_validator(mode="after")
    def _run_is_campaign(self) -> RLCampaignConfig:
        if self.rl.run_name != self.name:
            raise ValueError(f"rl.run_name {self.rl.run_name!r} must be the campaign name {self.name!r}")
        if self.rl.prompts_per_step != 1:
            raise ValueError("an RL campaign samples one prompt per step (rl.prompts_per_step = 1)")
        return self


class RLSample(Strict):
    """One sampled reply and the idea read from it (None: the reply holds no idea of the asked format)."""

    completion: str
    finished: bool = True  # the reply ended by itself (not cut at max tokens)
    title: str | None = None
    text: str | None = None


class RLSampleRequest(Strict):
    campaign: str
    env: str
    step: int
    provider: ProviderConfig  # openai-compatible, model = the adapter (or base) name to sample from
    n: int = Field(ge=1)
    reply_format: Literal["json", "text"] = "json"


class RLSamples(Strict):
    step: int
    messages: list[dict[str, str]]  # the prompt every sample answered (system + user)
    samples: list[RLSample]
    model: str  # which served model (adapter) produced them
    usage: Usage = Field(default_factory=Usage)

    def first_of_each_idea(self) -> list[int]:
        """For each sample, the index of the first sample holding the same idea (title and text equal up to case
        and whitespace): a group that repeats an idea executes it once. A sample with no idea is its own."""
        first: dict[str, int] = {}
        out = []
        for j, s in enumerate(self.samples):
            if s.title is None or s.text is None:
                out.append(j)
                continue
            key = " ".join(f"{s.title}\n{s.text}".lower().split())
            out.append(first.setdefault(key, j))
        return out


class RLScored(Strict):
    completion: str
    finished: bool = True
    reward: float
    executed: bool


class RLStepRequest(Strict):
    """One GRPO update on a step's executed group."""

    rl: RLConfig
    step: int = Field(ge=1)
    model_path: str
    messages: list[dict[str, str]]
    scored: list[RLScored]


class RLStepResult(Strict):
    step: int
    adapter: ArtifactRef  # zip of the PEFT adapter after this step
    adapter_name: str
    metrics: StepMetrics
    resumed_from: int | None = None  # the store checkpoint this update started from
    mlflow_run_id: str | None = None


class RLLoadAdapterRequest(Strict):
    server_url: str
    adapter_name: str
    adapter: ArtifactRef
    adapter_root: str | None = None


class RLResumePoint(Strict):
    """What the store knows of an RL run: its last completed step and the metrics of the steps before."""

    last: RLStepResult | None = None
    history: list[StepMetrics] = Field(default_factory=list)


class RLCampaignState(Strict):
    store_checked: bool = False  # the store's last completed step was read (a campaign started again resumes)
    steps_done: int = 0
    baseline_done: bool = False
    baseline_metric: float | None = None
    adapter_name: str | None = None  # the adapter the server samples from (None: the base model)
    adapter: ArtifactRef | None = None  # its zip in the store (reloaded into the server after a restart)
    pending: RLSamples | None = None  # samples of the step in progress
    history: list[StepMetrics] = Field(default_factory=list)  # the last MAX_RL_HISTORY steps
    sampled_from: list[str] = Field(default_factory=list)  # the served model of each of those steps
    best_reward: float | None = None
    notes: list[str] = Field(default_factory=list)


MAX_RL_HISTORY = 50


class RLCampaignInput(Strict):
    config: RLCampaignConfig
    state: RLCampaignState = Field(default_factory=RLCampaignState)


class RLCampaignStatus(Strict):
    name: str
    env: str
    phase: str
    steps_done: int
    steps: int
    adapter_name: str | None
    baseline_metric: float | None
    best_reward: float | None
    last: StepMetrics | None
    history: list[StepMetrics]
    sampled_from: list[str]
    notes: list[str]


class RLCampaignResult(Strict):
    name: str
    steps_done: int
    adapter_name: str | None
    baseline_metric: float | None
    best_reward: float | None
    history: list[StepMetrics]
    sampled_from: list[str]
