from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tmws.lexicon import RoutingLexicon
from tmws.models import ExecutionMode, PatternDefinition, PatternType
from tmws.patterns import default_library_path, load_pattern_file
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter


@pytest.fixture(scope="module")
def router() -> HybridRouter:
    library = load_pattern_file(default_library_path())
    return HybridRouter(PatternRegistry(library.patterns))


async def test_trigger_decides_with_alternatives(router: HybridRouter) -> None:
    decision = await router.route("run tool to check health", ExecutionMode.BALANCED)
    assert decision.decided_by == "trigger"
    assert decision.pattern_name == "execute_mcp_tool"
    assert "health_check" in decision.alternative_routes
    assert decision.trigger_pattern is not None and "tool" in decision.trigger_pattern


def _keyword_library() -> PatternRegistry:
    """Two memory patterns and one hybrid one whose examples share little with queries."""
    def defined(name: str, kind: PatternType, examples: list[str]) -> PatternDefinition:
        return PatternDefinition(name=name, pattern_type=kind, trigger_pattern=rf"\b{name}\b",
                                 examples=examples)
    return PatternRegistry([
        defined("recall_notes", PatternType.MEMORY, ["recall the notes about billing"]),
        defined("tag_search", PatternType.MEMORY, ["entries labelled billing"]),
        defined("trend_report", PatternType.HYBRID, ["weekly billing trend report"]),
    ], lexicon=RoutingLexicon())


def test_a_keyword_vote_decides_for_the_nearest_pattern_of_its_type() -> None:
    router = HybridRouter(_keyword_library(), min_score=1.0)  # examples alone never decide
    decision = router.route_sync("recall memory notes on billing")
    assert decision.decided_by == "keywords" and decision.pattern_type is PatternType.MEMORY
    nearest_memory = [c.pattern for c in decision.nearest_examples
                      if c.pattern in ("recall_notes", "tag_search")]
    assert decision.pattern_name == nearest_memory[0]
    assert 0 < decision.confidence <= 0.6 and "keywords" in decision.reasoning
    # The vote names a type whose patterns share nothing with the query: abstain.
    lonely = router.route_sync("remember the weekly billing report")
    assert lonely.decided_by == "none" and lonely.abstained and lonely.pattern_name is None
    assert "none of its patterns" in lonely.reasoning


@pytest.mark.parametrize(("query", "expected"), [
    ("check redis health for the payments cluster in frankfurt", "health_check"),
    ("check redis health bafuzo mikavi 0", "health_check"),  # bench/test_sla.py's misses
    ("recall memories about the vorpal snickersnee migration", "recall_memory"),
    ("summarize all findings on the glorp flange", "aggregate_insights"),
])
def test_clear_intent_with_unknown_subject_words_still_routes(
        router: HybridRouter, query: str, expected: str) -> None:
    # Most content words are unknown, but two or more known ones say what is wanted.
    decision = router.route_sync(query)
    assert decision.pattern_name == expected, decision.reasoning


def test_mostly_unknown_words_with_one_known_abstain(router: HybridRouter) -> None:
    decision = router.route_sync("set up a playdate with grandma saturday")
    assert decision.abstained, decision.reasoning


def _labelled_queries() -> list[str]:
    rows = []
    for name in ("paraphrases.tsv", "routing_dev.tsv", "routing_heldout.tsv",
                 "routing_heldout2.tsv", "routing_heldout3.tsv", "routing_heldout4.tsv",
                 "routing_heldout5.tsv"):
        path = Path(__file__).parent / "data" / name
        rows += [line.split("\t", 1)[1] for line in path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    return [*rows, "call the summarizer function with the last message",
            "analyze why latency spiked in the api", "", "!!!", "the the the"]


@pytest.mark.parametrize("mode", list(ExecutionMode))
def test_every_decision_ends_in_a_pattern_or_an_abstention(router: HybridRouter,
                                                           mode: ExecutionMode) -> None:
    for query in _labelled_queries():
        decision = router.route_sync(query, mode)
        if decision.decided_by == "none":
            assert decision.abstained and decision.pattern_name is None, query
        else:
            assert decision.pattern_name is not None, query
            pattern = router.registry.get(decision.pattern_name)
            assert pattern is not None and pattern.pattern_type is decision.pattern_type
            if mode is ExecutionMode.FAST:
                assert pattern.pattern_type is PatternType.INFRASTRUCTURE, query


async def test_fast_mode_never_routes_to_memory(router: HybridRouter) -> None:
    decision = await router.route("recall memories about auth", ExecutionMode.FAST)
    assert decision.pattern_type is PatternType.INFRASTRUCTURE
    assert decision.pattern_name != "recall_memory"


async def test_no_fit_abstains_with_candidates(router: HybridRouter) -> None:
    decision = await router.route("what is the weather in paris", ExecutionMode.BALANCED)
    assert decision.decided_by == "none" and decision.confidence == 0.0
    stats = router.get_stats()
    assert stats["decisions"]["none"] >= 1


async def test_examples_decide_when_no_trigger_matches(router: HybridRouter) -> None:
    decision = await router.route("please check the health of the database", "balanced")
    assert decision.decided_by == "examples"
    assert decision.pattern_name == "health_check"
    best = decision.nearest_examples[0]
    assert best.pattern == "health_check" and best.example == "check database health"
    assert decision.threshold is not None and best.score >= decision.threshold
    assert decision.margin is not None and decision.margin >= router.min_margin
    assert decision.runner_up == decision.nearest_examples[1].pattern
    assert not decision.abstained and "closest to example" in decision.reasoning


async def test_off_topic_queries_abstain_with_scored_candidates(router: HybridRouter) -> None:
    for query in ("tell me a joke", "what is the weather in paris",
                  "the quick brown fox jumps over the lazy dog"):
        decision = await router.route(query, "balanced")
        assert decision.decided_by == "none" and decision.abstained, query
        assert decision.pattern_name is None and decision.confidence == 0.0
        off_topic = router.registry.stage_two(query).off_topic
        # No pattern is close enough, an off-topic example is closer, or what the query is
        # about is mostly unknown to the library.
        assert all(c.score < router.min_score for c in decision.nearest_examples) or (
            off_topic is not None and "off-topic example" in decision.reasoning
            and off_topic.score >= decision.nearest_examples[0].score) or (
            "unknown to the pattern library" in decision.reasoning), query


async def test_fast_mode_limits_stage_two_to_infrastructure(router: HybridRouter) -> None:
    decision = await router.route("bring back our notes on the outage", ExecutionMode.FAST)
    assert decision.pattern_type is PatternType.INFRASTRUCTURE
    kinds = {router.registry.patterns(PatternType.INFRASTRUCTURE)[0].pattern_type}
    for candidate in decision.nearest_examples:
        pattern = router.registry.get(candidate.pattern)
        assert pattern is not None and pattern.pattern_type in kinds


async def test_thresholds_can_be_overridden_per_call(router: HybridRouter) -> None:
    query = "please check the health of the database"
    strict = router.explain(query, ExecutionMode.BALANCED, None, min_score=1.0, record=False)
    assert strict.decided_by != "examples"
    assert strict.threshold == 1.0


async def test_a_repeated_stage_two_decision_follows_pattern_changes() -> None:
    """Stage-2 decisions are kept per pattern set: a registration that brings a closer
    example, a threshold change or a database outage each decide afresh."""
    library = load_pattern_file(default_library_path())
    database_up = True
    router = HybridRouter(PatternRegistry(library.patterns),
                          database_available=lambda: database_up)
    query = "tally the orphaned shards across replicas"
    first = router.explain(query, ExecutionMode.BALANCED, None)
    again = router.explain(query, ExecutionMode.BALANCED, None)
    assert again == first and again is not first  # each caller gets its own to mark
    again.reasoning = "marked by a caller"
    assert router.explain(query, ExecutionMode.BALANCED, None).reasoning == first.reasoning
    counted = router.get_stats()["decisions"][first.decided_by]
    router.explain(query, ExecutionMode.BALANCED, None)
    assert router.get_stats()["decisions"][first.decided_by] == counted + 1

    template = library.patterns[0]
    router.registry.register(msgspec.structs.replace(
        template, name="shard_tally", pattern_type=PatternType.INFRASTRUCTURE,
        trigger_pattern=r"\bzzqx\b", examples=[query], metadata={}))
    changed = router.explain(query, ExecutionMode.BALANCED, None)
    assert changed.decided_by == "examples" and changed.pattern_name == "shard_tally"

    near = "please check the health of the database"
    assert router.explain(near, ExecutionMode.BALANCED, None).decided_by == "examples"
    router.min_score = 1.0
    assert router.explain(near, ExecutionMode.BALANCED, None).decided_by != "examples"

    router.min_score = 0.3
    recall = "bring back our notes on the outage"
    assert router.explain(recall, ExecutionMode.BALANCED, None).pattern_type is not (
        PatternType.INFRASTRUCTURE)
    database_up = False
    down = router.explain(recall, ExecutionMode.BALANCED, None)
    assert down.pattern_type is PatternType.INFRASTRUCTURE


@pytest.mark.parametrize("query", [
    "install the new ceiling fan in the bedroom",
    "save me a seat at the concert",
    "what's the recent news in tennis",
    "record the football game tonight",
    "count the calories in my lunch",
])
def test_a_trigger_on_an_everyday_request_yields_to_the_off_topic_examples(
        router: HybridRouter, query: str) -> None:
    fired = router.match(query, ExecutionMode.BALANCED)
    assert fired is not None  # the regular expression alone would take it
    decision = router.route_sync(query)
    assert decision.abstained and decision.pattern_name is None, decision.reasoning
    assert f"trigger of pattern {fired.name!r} matched, but the query reads as off-topic" in (
        decision.reasoning)


@pytest.mark.parametrize(("query", "expected"), [
    ("save postgres vacuum settings tuned", "store_memory"),
    ("remember that the redis failover script needs sudo", "store_memory"),
    ("install numpy on the ci runner", "system_command"),
    ("recent changes to the auth service", "temporal_analysis"),
    ("calculate the p95 latency of the api", "quick_calculation"),
    ("check health of the payments service", "health_check"),
    ("run tool number 3", "execute_mcp_tool"),  # "number" is everyday, the request is not
])
def test_a_trigger_on_a_domain_request_stands(router: HybridRouter, query: str,
                                              expected: str) -> None:
    decision = router.route_sync(query)
    assert decision.decided_by == "trigger" and decision.pattern_name == expected


def test_incidental_words_do_not_overrule_a_clear_trigger(router: HybridRouter) -> None:
    # Digits and "number" lean off-topic ("is 97 a prime number"); the request does not.
    stray = [i for i in range(300)
             if router.route_sync(f"run tool number {i}").pattern_name != "execute_mcp_tool"]
    assert stray == []


def test_a_trigger_of_a_pattern_with_few_examples_is_never_overruled() -> None:
    """Two examples cannot speak for a pattern against hundreds of off-topic ones."""
    home = PatternDefinition(name="home_install", pattern_type=PatternType.INFRASTRUCTURE,
                             trigger_pattern=r"\binstall\b",
                             examples=["install the agent", "install the exporter"])
    router = HybridRouter(PatternRegistry([home], lexicon=RoutingLexicon.shipped()))
    decision = router.route_sync("install the new ceiling fan in the bedroom")
    assert decision.decided_by == "trigger" and decision.pattern_name == "home_install"


def test_a_misspelled_trigger_word_still_fires_its_trigger(router: HybridRouter) -> None:
    query = "Please insatll numpy on the CI runner"
    assert router.match(query, ExecutionMode.BALANCED) is None
    decision = router.route_sync(query)
    assert decision.decided_by == "trigger" and decision.pattern_name == "system_command"
    assert decision.captures == {"target": "numpy"}
    assert "'Please install numpy on the CI runner'" in decision.reasoning
    recent = router.route_sync("recnet changes to the api gateway")
    assert recent.decided_by == "trigger" and recent.pattern_name == "temporal_analysis"
    # Misspellings the lexicon lists count too, even where the examples use them.
    for typo, expected in (("remeber the dr drill is on the first tuesday", "store_memory"),
                           ("recal what we wrote on canary deploys", "recall_memory"),
                           ("recnt notes on the vpn rollout", "temporal_analysis")):
        decision = router.route_sync(typo)
        assert decision.decided_by == "trigger" and decision.pattern_name == expected, typo


@pytest.mark.parametrize(("query", "expected"), [
    # A verb of invocation, then up to two words naming the tool.
    ("invoke the ocr function on these receipts", "execute_mcp_tool"),
    ("fire off the notion tool to create a page", "execute_mcp_tool"),
    ("trigger the pagerduty mcp tool", "execute_mcp_tool"),
    # The noun "health check".
    ("run a health check on every backend", "health_check"),
    ("healthcheck the payments api", "health_check"),
    # A tag without "with"/"as", or named before the word "tag".
    ("stuff we tagged urgent", "search_by_tag"),
    ("notes with the dns tag", "search_by_tag"),
    # Similarity to a described incident outranks the word "past".
    ("what past issues are similar to this disk full alert", "semantic_search"),
    ("prior occurrences comparable to the disk filling up", "semantic_search"),
    ("find past incidents resembling this cert expiry", "semantic_search"),
    # "past" is temporal when a period or a kind of change follows it.
    ("review past architecture decisions", "temporal_analysis"),
    ("what changed in the past 3 days", "temporal_analysis"),
    ("past deployments of the billing service", "temporal_analysis"),
    # Oldest/newest first, and a window between two dates.
    ("oldest notes about the vpn", "temporal_analysis"),
    ("what was stored between march 3 and march 9", "temporal_analysis"),
    ("entries between 2024-01-02 and 2024-01-09", "temporal_analysis"),
    # One derived cache figure is a calculation, the counters as a whole are statistics.
    ("what's the cache hit rate?", "quick_calculation"),
    ("hit/miss ratio of the pattern cache", "quick_calculation"),
    # A tool named by its identifier, quoted or not.
    ("call jira_create_issue with project OPS", "execute_mcp_tool"),
    ("please invoke the `docker_logs` function for the gateway", "execute_mcp_tool"),
    ("hit the opsgenie_ack_alert tool for alert 42", "execute_mcp_tool"),
    # Liveness of a named component.
    ("liveness of the scheduler service", "health_check"),
    ("is the ingress controller serving traffic", "health_check"),
    ("are the kafka brokers reachable from the workers", "health_check"),
    # A recall with a colon, a search of memory, and "anything like" a description.
    ("recall: kafka consumer lag", "recall_memory"),
    ("search memory for the dns resolution timeout", "recall_memory"),
    ('anything like "ECONNRESET when calling auth"?', "semantic_search"),
    # A setting changed to a value: a number, an identifier, a URL or a constant.
    ("set REDIS_URL in the .env file to redis://cache:6379/0", "system_command"),
    ("raise the worker limit from 4 to 16", "system_command"),
    ("change the timezone on the db server to UTC", "system_command"),
    # A tag outranks the recall verb that asks for it.
    ("retrieve the items carrying the dns tag", "search_by_tag"),
])
def test_default_triggers_fire_on_their_phrasings(router: HybridRouter, query: str,
                                                  expected: str) -> None:
    fired = router.match(query, ExecutionMode.BALANCED)
    assert fired is not None and fired.name == expected


@pytest.mark.parametrize("query", [
    "I need to book a health check-up with my GP",  # not the noun "health check"
    "given our past incidents, how should we structure on-call?",  # past + a plain noun
    "does this ring a bell from past incidents? dns failing in k8s",
    "who won the past three super bowls",
    "things resembling this failing readiness probe",  # "readiness" needs of/for
    "is the ski lift up and running this weekend",  # "up" and "alive" are everyday words
    "are avocados actually healthy or just hype",
    "put the before and after of the cache change next to each other",  # no value
    "change my flight to the later one",
])
def test_default_triggers_stay_silent_on_these(router: HybridRouter, query: str) -> None:
    assert router.match(query, ExecutionMode.BALANCED) is None
