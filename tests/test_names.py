"""Ids and names have one home (ideaforge.names): built and parsed there, and they round-trip."""

from __future__ import annotations

import pytest

from ideaforge import names
from ideaforge.names import (
    IdeaRef,
    campaign_of_workflow_id,
    campaign_workflow_id,
    experiment_name,
    idea_id,
    parse_idea_id,
    search_attribute_flag,
)


@pytest.mark.parametrize(("campaign", "epoch", "index"), [("c1", 0, 0), ("my_run-2", 12, 7), ("x", 1234, 250)])
def test_idea_id_round_trips(campaign: str, epoch: int, index: int) -> None:
    iid = idea_id(campaign, epoch, index)
    assert iid.startswith(campaign_workflow_id(campaign) + "/")
    assert parse_idea_id(iid) == IdeaRef(campaign, epoch, index)
    assert campaign_of_workflow_id(campaign_workflow_id(campaign)) == campaign


def test_idea_id_format_is_stable() -> None:
    # the format is part of every running campaign's history and every MLflow run: changing it breaks them
    assert idea_id("c", 2, 1) == "campaign-c/e002/i01"
    assert parse_idea_id("campaign-c/e002/i01").short == "e002/i01"
    assert experiment_name("c") == "ideaforge/c"


@pytest.mark.parametrize(
    "bad",
    ["", "draft-3", "campaign-c", "campaign-c/e2/i01", "campaign-c/e002/i1", "campaign-C/e002/i01",
     "campaign-c/e002/i01/x", "xcampaign-c/e002/i01", "campaign-/e002/i01"],
)
def test_parse_idea_id_refuses_what_idea_id_cannot_build(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an idea id"):
        parse_idea_id(bad)


@pytest.mark.parametrize("bad", ["c", "campaign-", "campaign-c/e000/i00", "Campaign-c"])
def test_campaign_of_workflow_id_refuses_other_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="not a campaign workflow id"):
        campaign_of_workflow_id(bad)


def test_search_attributes_declared_once_with_cli_flags() -> None:
    assert [search_attribute_flag(k) for k in names.SEARCH_ATTRIBUTES] == [
        "Epoch=Int",
        "BestMetric=Double",
        "Env=Keyword",
    ]
    assert names.SEARCH_ATTRIBUTES == (names.EPOCH, names.BEST_METRIC, names.ENV)

