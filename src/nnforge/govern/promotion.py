"""The promotion gate: a run's model goes to a stage (``production``) only with an authenticated approver and
passing regression suites, and the ledger keeps both; a promotion can be revoked, never deleted.

The approver is a :class:`nnforge.govern.users.User` authenticated by its token, with the ``approver`` or
``admin`` role (a reviewer is refused before anything is read); the event records the user and, when they have
a registered key, their signature over the event (:func:`nnforge.govern.users.decision_data`).

The gate reads the ledger, not the run folder: the ledger must verify and must have recorded the run, the
variant's weights must be the bytes the run recorded writing (``artifact.written``), and the verdicts are the
newest ``suite.evaluated`` event per suite about the promoted variant (``nnforge evaluate`` or a recipe's
``gate`` step). When there are any — or when the caller names one — every one must have passed; a run with no
suite at all may be promoted, and the record says that no suite was run. A result file in the run folder that
differs from the one recorded is an integrity error; deleting one changes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnforge import runs
from nnforge.errors import ConfigError, IntegrityError, NnforgeError
from nnforge.govern.users import User, decision_data, require
from nnforge.ledger import Event, Ledger, file_sha256

__all__ = ["STAGES", "PromotionRefused", "SuiteRecord", "promote", "revoke", "promotions"]

STAGES = ("staging", "production")


class PromotionRefused(NnforgeError):
    """A promotion the gate refuses (a regression suite failed): exit code 1, not a usage error."""

    exit_code = 1


@dataclass(frozen=True)
class SuiteRecord:
    """One recorded suite verdict: its name, whether it passed, the variant judged, its result file and sha256."""

    name: str
    path: str
    passed: bool
    variant: str | None
    sha256: str
    suite_sha256: str | None
    failed: list[str]
    seq: int | None = None  # the ``suite.evaluated`` event this verdict comes from

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "passed": self.passed, "variant": self.variant,
                "sha256": self.sha256, "suite_sha256": self.suite_sha256, "failed": self.failed, "seq": self.seq}


def _check_suite_name(suite: str) -> None:
    if not suite or "/" in suite or "\\" in suite or suite.startswith(".") or "@" in suite or "*" in suite:
        raise ConfigError(f"suite name {suite!r}: expected a plain name such as 'quickstart'")


def _verdicts(events: list[Event], variant: str) -> dict[str, Event]:
    """The newest ``suite.evaluated`` event per suite about ``variant`` (a later evaluation replaces an earlier one)."""
    out: dict[str, Event] = {}
    for e in events:
        if e.kind == "suite.evaluated" and e.data.get("variant") == variant:
            out[str(e.data.get("suite"))] = e
    return out


def _record(folder: Path, e: Event, weights_sha: str) -> SuiteRecord:
    """The verdict of one recorded evaluation; the result file shown beside it must still be the one recorded."""
    d = e.data
    name, variant = str(d.get("suite")), str(d.get("variant"))
    judged = d.get("weights_sha256")
    if judged is not None and judged != weights_sha:
        raise IntegrityError(f"suite {name!r} (event #{e.seq}) judged other weights of variant {variant!r} "
                             f"(sha256 {str(judged)[:12]}…, the file is {weights_sha[:12]}…). Rerun 'nnforge evaluate'")
    recorded = str((d.get("outputs") or {}).get("json"))
    path = ""
    for candidate in (folder / f"suite-{name}.json", folder / f"suite-{name}@{variant}.json"):
        if not candidate.is_file():
            continue
        try:
            about = json.loads(candidate.read_text(encoding="utf-8")).get("variant")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            about = variant  # unreadable: compared by hash below, which fails
        if about == variant:
            path = str(candidate)
            if file_sha256(candidate) != recorded:
                raise IntegrityError(f"{candidate}: this suite result is not the one the ledger recorded for it "
                                     f"(event #{e.seq}): it was edited or replaced after it was written. Rerun "
                                     "'nnforge evaluate' to produce a recorded result")
    failed = [str(x) for x in d.get("failed") or []] if isinstance(d.get("failed"), list) else []
    return SuiteRecord(name=name, path=path, passed=d.get("passed") is True, variant=variant, sha256=recorded,
                       suite_sha256=d.get("suite_sha256"), failed=failed, seq=e.seq)


def _gate_weights(ledger: Ledger, events: list[Event], folder: Path, name: str, weights: Path) -> str:
    """The sha256 of the variant's weights, which must be the bytes the run recorded writing."""
    check = ledger.verify()
    if not check.ok:
        raise IntegrityError(f"the ledger at {ledger.location} does not verify ({check.reason}); nothing can be "
                             "promoted on its records. Run 'nnforge ledger verify'")
    written = [e.data.get("sha256") for e in events if e.kind == "artifact.written" and e.data.get("name") == f"model:{name}"]
    if not written:
        raise IntegrityError(f"{folder}: the ledger holds no record of writing the weights of variant {name!r}")
    sha = file_sha256(weights)
    if sha != written[-1]:
        raise IntegrityError(f"{weights}: the weights of variant {name!r} are not the bytes the run wrote (sha256 "
                             f"{sha[:12]}…, recorded {str(written[-1])[:12]}…); they were replaced after the run")
    return sha


def promote(ledger: Ledger, run_dir: str | os.PathLike[str], *, approver: User | None, to: str = "production",
            variant: str | None = None, suite: str | None = None,
            key_file: str | os.PathLike[str] | None = None) -> Event:
    """Record ``model.promoted`` for a run's model after checking the gate; returns the event.

    ``approver`` is the authenticated user; ``key_file`` their private key when they have a registered one.

    Raises:
        AccessDenied: no authenticated user, a reviewer (promoting needs approver or admin), a missing or
            foreign signing key.
        ConfigError: unknown stage or variant, a named suite never evaluated, a ledger that did not
            record the run.
        PromotionRefused: a suite considered did not pass (the message names it and its failed checks), or
            every suite evaluated another variant than the one promoted.
        IntegrityError: the ledger does not verify; the weights are not the bytes the run wrote, or a suite
            judged other weights; a result file edited or replaced after it was recorded.
    """
    who = require(approver, "promote")
    if to not in STAGES:
        raise ConfigError(f"promotion: stage {to!r} is not one of {list(STAGES)}")
    folder = Path(run_dir)
    cfg = runs.read_config(folder)
    variants: dict[str, str] = dict(cfg.get("variants") or {})
    name = variant or cfg.get("final_variant") or next(iter(variants), None)
    if name is None or name not in variants:
        raise ConfigError(f"{folder}: no model variant {name!r} to promote; the run has {sorted(variants)}")
    weights = runs.variant_path(folder, name, variants[name])
    if not weights.is_file():
        raise IntegrityError(f"{weights}: the weights of variant {name!r} are missing")
    run_id = str(cfg.get("run_id") or folder.name)
    if suite is not None:
        _check_suite_name(suite)
    events = ledger.run_events(run_id)  # a folder no ledger recorded (or another ledger's run) is refused
    weights_sha = _gate_weights(ledger, events, folder, name, weights)
    verdicts = _verdicts(events, name)
    if suite is not None:
        if suite not in verdicts:
            judged = sorted({str(e.data.get("variant")) for e in events
                             if e.kind == "suite.evaluated" and e.data.get("suite") == suite})
            if judged:
                raise PromotionRefused(f"{folder}: not promoted: suite {suite!r} evaluated {judged}, not variant "
                                       f"{name!r}. Run 'nnforge evaluate {folder} --variant {name} --suite {suite}' first")
            raise ConfigError(f"{folder}: the ledger records no evaluation of suite {suite!r} for run {run_id}. "
                              f"Run 'nnforge evaluate {folder} --suite {suite}' first")
        verdicts = {suite: verdicts[suite]}
    elif not verdicts and any(e.kind == "suite.evaluated" for e in events):
        # a suite passed by the int8 model says nothing about the fp32 one
        have = ", ".join(sorted({f"{e.data.get('suite')} on {e.data.get('variant')}" for e in events
                                 if e.kind == "suite.evaluated"}))
        raise PromotionRefused(f"{folder}: not promoted: no regression suite evaluated variant {name!r} ({have}). "
                               f"Run 'nnforge evaluate {folder} --variant {name} --suite SUITE' first")
    suites = [_record(folder, e, weights_sha) for e in verdicts.values()]
    failed = [s for s in suites if not s.passed]
    if failed:
        detail = "; ".join(f"{s.name} ({', '.join(s.failed) or 'failed'})" for s in failed)
        raise PromotionRefused(f"{folder}: not promoted: regression suite failed: {detail}. Fix the model or the "
                               "suite, rerun 'nnforge evaluate', then promote again")
    data = decision_data(who, "promote", "model.promoted", run_id, {
        "stage": to, "variant": name, "weights": variants[name], "weights_sha256": weights_sha,
        "approver": who.name, "suites": [s.to_dict() for s in suites], "suite_required": suite is not None,
        "no_suite": not suites}, key_file)
    return ledger.append("model.promoted", data, run=run_id, actor=who.name)


def promotions(ledger: Ledger, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every promotion (optionally of one run), each with ``revoked`` (the revoking event's seq, or None)."""
    out: list[dict[str, Any]] = []
    revoked: dict[int, int] = {}
    for e in ledger.events(run=run_id):
        if e.kind == "model.promoted":
            out.append({"seq": e.seq, "run": e.run, "time": e.time, **e.data})
        elif e.kind == "model.revoked":
            revoked[int(e.data.get("promotion_seq", 0))] = e.seq
    for p in out:
        p["revoked"] = revoked.get(p["seq"])
    return out


def revoke(ledger: Ledger, run_dir: str | os.PathLike[str], *, approver: User | None, reason: str,
           key_file: str | os.PathLike[str] | None = None) -> Event:
    """Record ``model.revoked`` for the run's latest promotion that is still standing (nothing is deleted);
    ``approver`` is the authenticated user (approver or admin)."""
    who = require(approver, "revoke")
    if not (reason or "").strip():
        raise ConfigError("revoking a promotion needs a reason (--reason TEXT)")
    folder = Path(run_dir)
    run_id = str(runs.read_config(folder).get("run_id") or folder.name)
    standing = [p for p in promotions(ledger, run_id) if p["revoked"] is None]
    if not standing:
        raise ConfigError(f"run {run_id}: no standing promotion to revoke in {ledger.location}")
    p = standing[-1]
    data = decision_data(who, "revoke", "model.revoked", run_id, {
        "promotion_seq": p["seq"], "stage": p.get("stage"), "variant": p.get("variant"),
        "weights_sha256": p.get("weights_sha256"), "approver": who.name, "reason": reason}, key_file)
    return ledger.append("model.revoked", data, run=run_id, actor=who.name)
