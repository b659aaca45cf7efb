"""Names shared by workflows, workers and the CLI: task queues, activities, search attributes."""

ORCHESTRATOR_QUEUE = "orchestrator"
CPU_QUEUE = "cpu"

# activities (referenced by name from workflows so workflow code imports nothing heavy)
DESCRIBE_ENV = "describe_env"
IDEATE = "ideate"
IMPLEMENT = "implement"
PACKAGE = "package"
RUN_EXPERIMENT = "run_experiment"
RECORD_IDEA = "record_idea"
RECORD_EPOCH = "record_epoch"
SAVE_STATE = "save_state"
TRAIN_SLOTS = "train_slots"  # the worker's training slots: a campaign's default number of slots to keep busy
IDEA_RESULTS = "idea_results"  # outcomes of ideas that closed while their campaign was not listening

# search attributes registered on the Temporal server (name -> CLI type)
SEARCH_ATTRIBUTES = {"Epoch": "Int", "BestMetric": "Double", "Env": "Keyword"}
