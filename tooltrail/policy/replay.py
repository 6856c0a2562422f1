"""Replay a candidate policy over landed actions and report what would change.

How it scales: DuckDB scans the landed Parquet once (vectorised, all cores) and groups the
actions by the only inputs a decision can depend on — tool, agent, MCP server, the
top-level argument keys the *candidate* policy reads (``Policy.argument_keys``), the tool
annotations and session-id presence when the policy uses them — together with the landed
outcome. Python then calls ``Policy.decide`` once per distinct input tuple (cached across
landed outcomes) and folds the per-group counts. Cost is O(N) in DuckDB plus
O(distinct inputs) in Python: a policy over low-cardinality arguments (repo, branch, file
globs) replays millions of actions in seconds; one that reads a unique-per-call argument
(a regex over commit messages) pays one ``decide`` per such call (~10 µs each here).

Trust: the decision compared is computed by the same ``Policy.decide`` the exporter and
instrumentation use; the projection keeps every argument a condition, target or rewrite
template can read, so replaying the policy that produced the data reports zero changes
(tested). Landed rows with redactions cannot always be re-decided faithfully (the secret
a condition looked at is gone), so they are replayed on the redacted text like every
other row; a change there is a real one when every candidate rule that matched the row on
landing still matches. Otherwise, when deciding again as if those rules still matched
gives the landed outcome, the change is the redaction's doing: a row decided by this very
policy version keeps its landed outcome (``kept_redacted``: ``decide`` is deterministic),
a row decided by another is counted apart (``changed_on_redacted``) — never in
``changed``, the transitions or the examples; those rules keep the row's hit, so they do
not look dead. A row cannot skip the check by claiming redactions: only a difference the
redaction explains is set apart.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import duckdb

from tooltrail.config import SPANS_DIR
from tooltrail.errors import BadInputError, QueryError
from tooltrail.policy import numbers
from tooltrail.policy.durations import MAX_SINCE_S
from tooltrail.policy.engine import Policy
from tooltrail.policy.matchers import MISSING
from tooltrail.policy.model import ToolCall
from tooltrail.policy.rows import parse_annotations
from tooltrail.semconv import BLAST_RADII, TT_TOOL_ANNOTATIONS

ACTIONS_VIEW: Final = "replay_actions"
_BATCH_ROWS: Final = 50_000
_PRESENT_SESSION: Final = "<session>"
NONE_LABEL: Final = "(none)"

_JSON_CACHE_MAX: Final = 200_000
_NO_TIME: Final = 2**62  # sorts actions without a start time last

Progress = Callable[[int, int], None]
"""Called as ``progress(groups_done, groups_total)`` while deciding."""


def connect_actions(data_dir: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection | None:
    """A DuckDB connection with the landed tool actions as view ``replay_actions``, or
    None when nothing has landed. The one place replay learns where actions live: switch
    it to ``tooltrail.analytics.connect(data_dir)`` and its ``actions`` view when shared.
    """
    spans = Path(data_dir) / SPANS_DIR
    if not spans.is_dir() or next(spans.glob("date=*/*.parquet"), None) is None:
        return None
    con = duckdb.connect()
    try:
        relation = con.read_parquet(
            str(spans / "date=*" / "*.parquet"), hive_partitioning=True, union_by_name=True
        )
        relation.filter("span_type = 'tool'").create_view(ACTIONS_VIEW)
    except duckdb.Error as e:
        con.close()
        raise QueryError(f"cannot read the landed spans under {spans}: {e}") from e
    return con


@dataclass(slots=True)
class ReplayReport:
    """What replaying ``policy_version`` over the landed actions would change."""

    policy_version: str
    data_dir: str
    since: str | None
    actions: int = 0
    distinct_inputs: int = 0
    changed: int = 0  # actions whose decision, verdict or blast radius would change
    decision_changes: int = 0
    verdict_changes: int = 0  # same decision, different winning rule
    blast_radius_changes: int = 0
    newly_unmatched: int = 0  # matched a rule when landed, no rule now
    # Redacted on landing, replayed differently only because a rule that matched them
    # cannot see the redacted values: not in ``changed``. Decided by another version
    # (changed_on_redacted) or by this one (kept_redacted: the landed outcome stands).
    changed_on_redacted: int = 0
    kept_redacted: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    by_rule: list[dict[str, Any]] = field(default_factory=list)
    by_agent: list[dict[str, Any]] = field(default_factory=list)
    blast_radius: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    rule_hits: dict[str, int] = field(default_factory=dict)
    dead_rules: list[str] = field(default_factory=list)
    landed_versions: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    scan_s: float = 0.0  # DuckDB: scan and group the landed actions
    decide_s: float = 0.0  # Python: decide each distinct input and fold the counts

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "data_dir": self.data_dir,
            "since": self.since,
            "actions": self.actions,
            "distinct_inputs": self.distinct_inputs,
            "changed": self.changed,
            "decision_changes": self.decision_changes,
            "verdict_changes": self.verdict_changes,
            "blast_radius_changes": self.blast_radius_changes,
            "newly_unmatched": self.newly_unmatched,
            "changed_on_redacted": self.changed_on_redacted,
            "kept_redacted": self.kept_redacted,
            "transitions": self.transitions,
            "by_rule": self.by_rule,
            "by_agent": self.by_agent,
            "blast_radius": self.blast_radius,
            "verdicts": self.verdicts,
            "rule_hits": self.rule_hits,
            "dead_rules": self.dead_rules,
            "landed_versions": self.landed_versions,
            "examples": self.examples,
            "elapsed_s": round(self.elapsed_s, 3),
            "scan_s": round(self.scan_s, 3),
            "decide_s": round(self.decide_s, 3),
        }


def _json_pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True, slots=True)
class _Query:
    sql: str
    params: list[Any]
    arg_keys: tuple[str, ...]
    with_annotations: bool
    with_session: bool


def _group_query(policy: Policy, since: dt.datetime | None, max_examples: int) -> _Query:
    """Group actions by every input the candidate's decisions can depend on, plus the
    landed outcome; the earliest ``max_examples`` actions of each group as examples."""
    examples_per_group = max(1, int(max_examples))
    arg_keys = tuple(sorted(policy.argument_keys()))
    with_annotations = policy.uses_annotations()
    with_session = policy.uses_call_field("session_id")
    params: list[Any] = []
    inputs = ["tool_name", "agent_name", "mcp_server"]
    if with_annotations:
        inputs.append(
            "CASE WHEN json_valid(attributes) THEN json_extract_string(attributes, ?) END"
        )
        params.append(_json_pointer(TT_TOOL_ANNOTATIONS))
    if with_session:
        inputs.append("session_id IS NOT NULL")
    for key in arg_keys:
        inputs.append("json_extract(args_obj, ?)::VARCHAR")
        params.append(_json_pointer(key))
    params.append(policy.version)
    where = ""
    if since is not None:
        where = "WHERE start_time >= ?"
        params.append(since)
    # Landed `arguments` may be null, invalid JSON or not an object: those count as {} —
    # exactly as apply_to_row treats them.
    # Only fixed names and `?` placeholders are interpolated; every value is bound.
    sql = f"""
        SELECT {", ".join(f"{expr} AS in_{i}" for i, expr in enumerate(inputs))},
               decision, policy_rule, blast_radius,
               coalesce(len(policy_matched), 0) > 0 AS old_matched,
               -- Only for rows whose landed arguments hold a redaction (few): null
               -- elsewhere, so neither column splits the groups of ordinary rows. A
               -- redaction count alone (a scrubbed attribute, or a forged count) does not
               -- qualify: nothing a condition reads was hidden.
               CASE WHEN coalesce(redactions, 0) > 0
                         AND contains(coalesce(arguments, ''), '[REDACTED')
                    THEN coalesce(policy_matched, []::VARCHAR[]) END AS redacted_matched,
               coalesce(redactions, 0) > 0 AND coalesce(policy_version = ?, false) AS kept,
               count(*) AS n,
               epoch_us(min(start_time)) AS first_us,
               arg_min(struct_pack(s := session_id, p := span_id, t := epoch_us(start_time)),
                       start_time, {examples_per_group:d}) AS examples
        FROM (
            SELECT *,
                   CASE WHEN json_valid(arguments) THEN
                       (CASE WHEN json_type(arguments) = 'OBJECT' THEN arguments::JSON END)
                   END AS args_obj
            FROM {ACTIONS_VIEW} {where}
        )
        GROUP BY ALL
    """  # noqa: S608
    return _Query(sql, params, arg_keys, with_annotations, with_session)


class _Folder:
    """Decides each distinct input once and folds the landed-vs-candidate comparison."""

    def __init__(self, policy: Policy, query: _Query, max_examples: int) -> None:
        self.policy = policy
        self.rule_ids = frozenset(policy.rule_ids)
        self.rules = policy.rules
        self.query = query
        self.max_examples = max_examples
        self.cache: dict[tuple[Any, ...], tuple[str, str, str, tuple[str, ...]]] = {}
        self.transitions: Counter[tuple[Any, ...]] = Counter()
        self.by_rule: Counter[tuple[Any, ...]] = Counter()
        self.by_agent: Counter[tuple[Any, ...]] = Counter()
        self.radius: Counter[tuple[Any, ...]] = Counter()
        self.verdicts: Counter[tuple[Any, ...]] = Counter()
        self.hits: Counter[str] = Counter()
        # Per decision transition, the earliest examples as (time_us, span_id, example).
        self.examples: dict[tuple[Any, ...], list[tuple[int, str, dict[str, Any]]]] = {}
        self.report_counts: Counter[str] = Counter()
        # Argument values repeat (repos, branches): parse each JSON text once.
        self.json_values: dict[str, Any] = {}

    def _decide(self, key: tuple[Any, ...]) -> tuple[str, str, str, tuple[str, ...]]:
        q = self.query
        tool, agent, server = key[0], key[1], key[2]
        i = 3
        annotations = None
        if q.with_annotations:
            annotations = parse_annotations(key[i])
            i += 1
        session = None
        if q.with_session:
            session = _PRESENT_SESSION if key[i] else None
            i += 1
        args = {
            k: self._loads(v) for k, v in zip(q.arg_keys, key[i:], strict=True) if v is not None
        }
        d = self.policy.decide(
            ToolCall(
                tool=tool if isinstance(tool, str) else "",
                arguments=args,
                agent=agent,
                session_id=session,
                server=server,
                annotations=annotations,
            )
        )
        return d.decision, d.policy_rule, d.blast_radius, d.policy_matched

    def _hidden_by_redaction(
        self, landed_matched: Sequence[str], matched: Sequence[str]
    ) -> list[str]:
        """Rules of the candidate that matched a redacted row when it landed but do not
        match its redacted arguments now: the redaction may have removed what they test
        (typically the redacting rule's own condition on the secret)."""
        return [r for r in landed_matched if r in self.rule_ids and r not in matched]

    def _with_hidden(
        self,
        decision: str,
        verdict: str,
        radius: str,
        matched: Sequence[str],
        hidden: Sequence[str],
    ) -> tuple[str, str, str]:
        """The outcome had ``hidden`` rules matched too: the strongest of all matched
        rules wins (first in file order on a tie, as the engine decides), and the blast
        radius is the highest of the outcome's and theirs."""
        wanted = {*matched, *hidden}
        winner = None
        for rule in self.rules:
            if rule.id in wanted and (winner is None or rule.rank > winner.rank):
                winner = rule
        if winner is not None:
            decision, verdict = winner.decision, winner.id
        rank = BLAST_RADII.index(radius) if radius in BLAST_RADII else 0
        for rule in self.rules:
            if rule.id in hidden and rule.radius > rank:
                rank = rule.radius
        return decision, verdict, BLAST_RADII[rank]

    def _loads(self, text: str) -> Any:
        # Shared parsed values are safe: decide() never mutates its arguments.
        value = self.json_values.get(text, MISSING)
        if value is MISSING:
            if len(self.json_values) > _JSON_CACHE_MAX:
                self.json_values.clear()
            # An integer too long to read (4,300 digits) is replayed as its digits
            # (text), as the collector keeps it, instead of ending the replay.
            value = self.json_values[text] = numbers.loads(text, long_int=str)
        return value

    def fold(self, row: Sequence[Any], n_inputs: int, examples: Callable[[], list[Any]]) -> None:
        """Fold one group; ``examples()`` converts its example actions only if needed."""
        key = tuple(row[:n_inputs])
        (old_decision, old_rule, old_radius, old_matched, redacted_matched, kept, n, first_us) = (
            row[n_inputs:]
        )
        counts = self.report_counts
        counts["actions"] += n
        result = self.cache.get(key)
        if result is None:
            result = self._decide(key)
            self.cache[key] = result
        new_decision, new_rule, new_radius, matched = result
        for rule_id in matched:
            self.hits[rule_id] += n
        if redacted_matched is not None:
            hidden = self._hidden_by_redaction(redacted_matched, matched)
            # A rule the redaction may have hidden from replay still matched the call as
            # made: never report it dead for that.
            for rule_id in hidden:
                self.hits[rule_id] += n
            landed = (old_decision, old_rule, old_radius)
            if hidden and (new_decision, new_rule, new_radius) != landed:
                # A rule that matched the call as made may no longer see its redacted
                # arguments. Decide again as if the hidden rules still matched: if that
                # gives the landed outcome, the change is the redaction's doing (counted
                # apart: by this same version, the landed outcome is what it decided on the
                # call as made, decide being deterministic); otherwise the candidate really
                # decides the call differently, and that is what is reported (a deleted
                # DENY must not hide behind a redacting rule, nor a row opt out of the
                # check by claiming redactions).
                new_decision, new_rule, new_radius = self._with_hidden(
                    new_decision, new_rule, new_radius, matched, hidden
                )
                if (new_decision, new_rule, new_radius) == landed:
                    counts["kept_redacted" if kept else "changed_on_redacted"] += n
                    return
        if old_matched and not matched:
            counts["newly_unmatched"] += n
        decision_changed = old_decision != new_decision
        verdict_changed = old_rule != new_rule
        radius_changed = old_radius != new_radius
        if not (decision_changed or verdict_changed or radius_changed):
            return
        counts["changed"] += n
        agent = key[1]
        if decision_changed:
            counts["decision_changes"] += n
            self.transitions[(old_decision, new_decision)] += n
            self.by_rule[(old_rule, new_rule, old_decision, new_decision)] += n
            self.by_agent[(agent, old_decision, new_decision)] += n
        elif verdict_changed:
            counts["verdict_changes"] += n
            self.verdicts[(old_rule, new_rule, new_decision)] += n
        if radius_changed:
            counts["blast_radius_changes"] += n
            self.radius[(old_radius, new_radius)] += n
        if self.max_examples <= 0:
            return
        bucket = self.examples.setdefault((old_decision, new_decision), [])
        first = first_us if first_us is not None else _NO_TIME
        if len(bucket) >= self.max_examples and first > bucket[-1][0]:
            return  # none of this group's actions is earlier than the examples kept
        for example in examples():
            t = example["t"] if example["t"] is not None else _NO_TIME
            bucket.append(
                (
                    t,
                    example["p"] or "",
                    {
                        "session_id": example["s"],
                        "span_id": example["p"],
                        "start_time": None if t == _NO_TIME else _iso(t),
                        "tool": key[0],
                        "agent": agent,
                        "from": old_decision,
                        "to": new_decision,
                        "old_rule": old_rule,
                        "new_rule": new_rule,
                        "old_blast_radius": old_radius,
                        "new_blast_radius": new_radius,
                    },
                )
            )
        bucket.sort(key=lambda item: (item[0], item[1]))
        del bucket[self.max_examples :]


def _iso(epoch_us: int) -> str:
    return (
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=epoch_us)
    ).isoformat()


def _as_py(column: Any, index: int) -> list[Any]:
    value: list[Any] = column[index].as_py() or []
    return value


def _rows(counter: Counter[tuple[Any, ...]], names: Sequence[str]) -> list[dict[str, Any]]:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], [str(v) for v in kv[0]]))
    return [{**dict(zip(names, key, strict=True)), "count": n} for key, n in ordered]


def replay(
    policy: Policy,
    data_dir: str | os.PathLike[str],
    *,
    since_s: float | None = 30 * 86_400.0,
    since_label: str | None = None,
    now: dt.datetime | None = None,
    max_examples: int = 5,
    progress: Progress | None = None,
) -> ReplayReport:
    """Evaluate ``policy`` over the tool actions landed under ``data_dir`` within the last
    ``since_s`` seconds (None: all; at most MAX_SINCE_S, see ``parse_since_seconds``) and
    compare with the decisions they landed with."""
    if since_s is not None and not 0 < since_s <= MAX_SINCE_S:
        # Beyond this, counting back from now leaves what datetime can represent.
        raise BadInputError(f"since_s={since_s!r}: must be > 0 and at most {MAX_SINCE_S:g}")
    started = time.perf_counter()
    report = ReplayReport(policy.version, str(data_dir), since_label)
    con = connect_actions(data_dir)
    if con is None:
        report.dead_rules = list(policy.rule_ids)
        report.elapsed_s = time.perf_counter() - started
        return report
    since = None
    if since_s is not None:
        since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=since_s)
    query = _group_query(policy, since, max_examples)
    n_inputs = 3 + int(query.with_annotations) + int(query.with_session) + len(query.arg_keys)
    try:
        con.execute(f"CREATE TEMP TABLE replay_groups AS {query.sql}", query.params)
    except duckdb.Error as e:
        con.close()
        raise QueryError(f"cannot replay the landed actions under {data_dir}: {e}") from e
    try:
        total_row = con.execute("SELECT count(*) FROM replay_groups").fetchone()
        total = int(total_row[0]) if total_row else 0
        versions_sql = "SELECT coalesce(policy_version, ?), count(*) FROM {view} {where} GROUP BY 1"
        version_rows = con.execute(
            versions_sql.format(
                view=ACTIONS_VIEW, where="WHERE start_time >= ?" if since is not None else ""
            ),
            [NONE_LABEL] + ([since] if since is not None else []),
        ).fetchall()
        report.scan_s = time.perf_counter() - started
        folder = _Folder(policy, query, max_examples)
        reader = con.sql("SELECT * FROM replay_groups").to_arrow_reader(_BATCH_ROWS)
        done = 0
        for batch in reader or ():
            # Every column but the (list of structs) examples, which are converted per
            # group only when they could be among the earliest examples of a transition.
            columns = [column.to_pylist() for column in batch.columns[:-1]]
            example_lists = batch.columns[-1]
            for j, row in enumerate(zip(*columns, strict=True)):
                folder.fold(row, n_inputs, partial(_as_py, example_lists, j))
            done += batch.num_rows
            if progress is not None:
                progress(done, total)
    finally:
        con.close()
    report.decide_s = time.perf_counter() - started - report.scan_s
    counts = folder.report_counts
    report.actions = counts["actions"]
    report.distinct_inputs = len(folder.cache)
    report.changed = counts["changed"]
    report.decision_changes = counts["decision_changes"]
    report.verdict_changes = counts["verdict_changes"]
    report.blast_radius_changes = counts["blast_radius_changes"]
    report.newly_unmatched = counts["newly_unmatched"]
    report.changed_on_redacted = counts["changed_on_redacted"]
    report.kept_redacted = counts["kept_redacted"]
    report.transitions = _rows(folder.transitions, ("from", "to"))
    report.by_rule = _rows(folder.by_rule, ("old_rule", "new_rule", "from", "to"))
    report.by_agent = _rows(folder.by_agent, ("agent", "from", "to"))
    report.blast_radius = _rows(folder.radius, ("from", "to"))
    report.verdicts = _rows(folder.verdicts, ("old_rule", "new_rule", "decision"))
    report.rule_hits = {rule_id: folder.hits[rule_id] for rule_id in policy.rule_ids}
    report.dead_rules = [rule_id for rule_id in policy.rule_ids if folder.hits[rule_id] == 0]
    report.landed_versions = dict(sorted(((str(v), int(n)) for v, n in version_rows)))
    for key in sorted(folder.examples, key=lambda k: [str(v) for v in k]):
        report.examples.extend(example for _, _, example in folder.examples[key])
    report.elapsed_s = time.perf_counter() - started
    return report
