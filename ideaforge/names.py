"""Names and ids, each defined once: task queues, activity names, search attributes, workflow and idea ids,
MLflow experiment names. Bottom layer: imports nothing from ideaforge (workflows may import it)."""

from __future__ import annotations

import re
from typing import NamedTuple

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

ORCHESTRATOR_QUEUE = "orchestrator"
CPU_QUEUE = "cpu"
# the CPU check of patched code before training: untrusted code, so it is served by sandboxed workers (training
# hosts), never next to the LLM keys of the `cpu` queue; it takes no training slot
PREFLIGHT_QUEUE = "preflight"

# activities (referenced by name from workflows so workflow code imports nothing heavy)
DESCRIBE_ENV = "describe_env"
IDEATE = "ideate"
IMPLEMENT = "implement"
PACKAGE = "package"
PREFLIGHT = "preflight"  # compile + the env's first training step on the CPU, before a training slot is taken
RUN_EXPERIMENT = "run_experiment"
RECORD_IDEA = "record_idea"
RECORD_EPOCH = "record_epoch"
SAVE_STATE = "save_state"
TRAIN_SLOTS = "train_slots"  # the worker's training slots: a campaign's default number of slots to keep busy
IDEA_RESULTS = "idea_results"  # outcomes of ideas that closed while their campaign was not listening

# RL of the ideator (RLCampaignWorkflow): sampling runs on the cpu queue, the GRPO trainer on its own queue
RL_QUEUE = "rl"  # the trainer's queue (a GPU machine in production; one update at a time per worker)
RL_SAMPLE = "rl_sample"
RL_UPDATE = "rl_update"
RL_LOAD_ADAPTER = "rl_load_adapter"
RL_RESUME = "rl_resume"  # the last completed step in the store, for a campaign started again under its name

# --------------------------------------------------------------------------- search attributes

EPOCH = SearchAttributeKey.for_int("Epoch")
BEST_METRIC = SearchAttributeKey.for_float("BestMetric")
ENV = SearchAttributeKey.for_keyword("Env")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (EPOCH, BEST_METRIC, ENV)
"""Registered on the Temporal server (``ideaforge up``, the test servers) and set by CampaignWorkflow."""

_CLI_TYPE = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}


def search_attribute_flag(key: SearchAttributeKey) -> str:
    """``Name=Type`` as the ``temporal server start-dev --search-attribute`` flag wants it."""
    return f"{key.name}={_CLI_TYPE[key.indexed_value_type]}"


# --------------------------------------------------------------------------- ids and experiment names

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
"""A campaign or env name: lowercase letters, digits, '-' or '_', at most 63 characters."""

CAMPAIGN_PREFIX = "campaign-"
EXPERIMENT_PREFIX = "ideaforge/"
_CAMPAIGN_ID_RE = re.compile(rf"^{CAMPAIGN_PREFIX}({NAME_PATTERN})$")
_IDEA_ID_RE = re.compile(rf"^{CAMPAIGN_PREFIX}({NAME_PATTERN})/e(\d{{3,}})/i(\d{{2,}})$")


class IdeaRef(NamedTuple):
    """The parts of an idea id."""

    campaign: str
    epoch: int
    index: int

    @property
    def short(self) -> str:
        """``e<NNN>/i<KK>``: the idea's place inside its campaign."""
        return f"e{self.epoch:03d}/i{self.index:02d}"


def campaign_workflow_id(name: str) -> str:
    """Id of a campaign's workflow: ``campaign-<name>``."""
    return f"{CAMPAIGN_PREFIX}{name}"


def campaign_of_workflow_id(workflow_id: str) -> str:
    """``campaign-<name>`` -> ``<name>``; ValueError for any other id."""
    m = _CAMPAIGN_ID_RE.match(workflow_id)
    if not m:
        raise ValueError(f"{workflow_id!r} is not a campaign workflow id (campaign-<name>)")
    return m.group(1)


def idea_id(campaign: str, epoch: int, index: int) -> str:
    """Deterministic idea id, also the child workflow id: ``campaign-<name>/e<NNN>/i<KK>``."""
    return f"{campaign_workflow_id(campaign)}/{IdeaRef(campaign, epoch, index).short}"


def parse_idea_id(value: str) -> IdeaRef:
    """The campaign, epoch and index inside an idea id; ValueError for anything ``idea_id`` cannot build."""
    m = _IDEA_ID_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not an idea id (campaign-<name>/e<NNN>/i<KK>)")
    return IdeaRef(m.group(1), int(m.group(2)), int(m.group(3)))


def state_key(campaign: str) -> str:
    """Object-store key of a campaign's last saved state (a CampaignInput as JSON)."""
    return f"campaigns/{campaign}/state.json"


def rl_workflow_id(name: str) -> str:
    """Id of an RL campaign's workflow: ``rl-<name>`` (its ideas are ``campaign-<name>/e<step>/i<k>``)."""
    return f"rl-{name}"


def rl_adapter_name(run_name: str, step: int) -> str:
    """The served name of an RL run's adapter after ``step``: ``<run>-step<NNNN>``."""
    return f"{run_name}-step{step:04d}"


def experiment_name(campaign: str) -> str:
    """The MLflow experiment that holds a campaign's runs: ``ideaforge/<campaign>``."""
    return f"{EXPERIMENT_PREFIX}{campaign}"
