"""The promotion gate: a run's model goes to a stage (``production``) only with a named approver and passing
regression suites, and the ledger keeps both; a promotion can be revoked, never deleted.

A run's suites are the ``suite-<name>.json`` (final variant) and ``suite-<name>@<variant>.json`` files that
``nnforge evaluate`` (or a recipe's ``gate`` step) wrote into its folder; only those about the promoted
variant are considered. When there are any — or when the caller names one — every one considered must have
``"passed": true``; a run with no suite at all may be promoted, and the record says that no suite was run.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, IntegrityError, NnforgeError
from nnforge.ledger._events import Event
from nnforge.ledger._ledger import Ledger, file_sha256
from nnforge.ledger._variants import variant_path

__all__ = ["STAGES", "PromotionRefused", "SuiteRecord", "run_suites", "promote", "revoke", "promotions"]

STAGES = ("staging", "production")


class PromotionRefused(NnforgeError):
    """A promotion the gate refuses (a regression suite failed): exit code 1, not a usage error."""

    exit_code = 1


@dataclass(frozen=True)
class SuiteRecord:
    """One suite result file of a run: its name, whether it passed, the variant judged, and its sha256."""

    name: str
    path: str
    passed: bool
    variant: str | None
    sha256: str
    suite_sha256: str | None
    failed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "passed": self.passed, "variant": self.variant,
                "sha256": self.sha256, "suite_sha256": self.suite_sha256, "failed": self.failed}


def _config(run_dir: Path) -> dict[str, Any]:
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{cfg_file}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise IntegrityError(f"{cfg_file}: expected a JSON object")
    return cfg


def _read_suite(path: Path) -> SuiteRecord:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: suite result is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("passed"), bool):
        raise IntegrityError(f"{path}: suite result has no boolean 'passed'; rerun 'nnforge evaluate'")
    name = path.name[len("suite-"):-len(".json")]
    failed = [str(c.get("name", c)) if isinstance(c, dict) else str(c) for c in doc.get("failed") or []]
    return SuiteRecord(name=str(doc.get("suite") or name), path=str(path), passed=doc["passed"],
                       variant=doc.get("variant"), sha256=file_sha256(path), suite_sha256=doc.get("sha256"),
                       failed=failed)


def run_suites(run_dir: str | os.PathLike[str], suite: str | None = None) -> list[SuiteRecord]:
    """The suite results of a run: those of the suite named ``suite`` (at least one must exist), else every
    ``suite-*.json`` (``suite-NAME.json`` judged the final variant, ``suite-NAME@VARIANT.json`` another)."""
    folder = Path(run_dir)
    if suite is not None:
        if not suite or "/" in suite or "\\" in suite or suite.startswith(".") or "@" in suite or "*" in suite:
            raise ConfigError(f"suite name {suite!r}: expected a plain name such as 'quickstart'")
        paths = [p for p in [folder / f"suite-{suite}.json"] if p.is_file()]
        paths += sorted(folder.glob(f"suite-{glob.escape(suite)}@*.json"))
        if not paths:
            have = sorted(p.name for p in folder.glob("suite-*.json"))
            raise ConfigError(f"{folder}: no result for suite {suite!r} (suite-{suite}.json missing; found "
                              f"{have or 'none'}). Run 'nnforge evaluate {folder} --suite {suite}' first")
        return [_read_suite(p) for p in paths]
    return [_read_suite(p) for p in sorted(folder.glob("suite-*.json"))]


def _check_recorded(ledger: Ledger, run_id: str, suites: list[SuiteRecord]) -> None:
    """Each suite result must be a file the ledger saw written (``suite.evaluated`` with its sha256): a
    result edited by hand, or copied from another run, cannot open the gate."""
    recorded = {str((e.data.get("outputs") or {}).get("json")) for e in ledger.events(run=run_id, kind="suite.evaluated")}
    for s in suites:
        if s.sha256 not in recorded:
            raise IntegrityError(f"{s.path}: this suite result is not one the ledger recorded for run {run_id} "
                                 "(edited after it was written, or from another run or ledger). Rerun "
                                 "'nnforge evaluate' to produce a recorded result")


def _approver(approver: str | None) -> str:
    name = (approver or "").strip()
    if not name:
        raise ConfigError("promotion: a named approver is required (--approver NAME)")
    return name


def promote(ledger: Ledger, run_dir: str | os.PathLike[str], *, approver: str | None, to: str = "production",
            variant: str | None = None, suite: str | None = None) -> Event:
    """Record ``model.promoted`` for a run's model after checking the gate; returns the event.

    Raises:
        ConfigError: no approver, unknown stage or variant, a named suite without a result file.
        PromotionRefused: a suite considered did not pass (the message names it and its failed checks), or
            every suite result is about another variant than the one promoted.
        IntegrityError: a suite result that the ledger never recorded (edited, or copied from elsewhere).
    """
    who = _approver(approver)
    if to not in STAGES:
        raise ConfigError(f"promotion: stage {to!r} is not one of {list(STAGES)}")
    folder = Path(run_dir)
    cfg = _config(folder)
    variants: dict[str, str] = dict(cfg.get("variants") or {})
    name = variant or cfg.get("final_variant") or next(iter(variants), None)
    if name is None or name not in variants:
        raise ConfigError(f"{folder}: no model variant {name!r} to promote; the run has {sorted(variants)}")
    weights = variant_path(folder, name, variants[name])
    if not weights.is_file():
        raise IntegrityError(f"{weights}: the weights of variant {name!r} are missing")
    suites = run_suites(folder, suite)
    run_id = str(cfg.get("run_id") or folder.name)
    _check_recorded(ledger, run_id, suites)
    other = [s for s in suites if s.variant not in (None, name)]
    if other and len(other) == len(suites):
        # a suite passed by the int8 model says nothing about the fp32 one
        have = ", ".join(f"{s.name} on {s.variant}" for s in other)
        raise PromotionRefused(f"{folder}: not promoted: no regression suite evaluated variant {name!r} ({have}). "
                               f"Run 'nnforge evaluate {folder} --variant {name} --suite SUITE' first")
    suites = [s for s in suites if s.variant in (None, name)]
    failed = [s for s in suites if not s.passed]
    if failed:
        detail = "; ".join(f"{s.name} ({', '.join(s.failed) or 'failed'})" for s in failed)
        raise PromotionRefused(f"{folder}: not promoted: regression suite failed: {detail}. Fix the model or the "
                               "suite, rerun 'nnforge evaluate', then promote again")
    return ledger.append("model.promoted", {
        "stage": to, "variant": name, "weights": variants[name], "weights_sha256": file_sha256(weights),
        "approver": who, "suites": [s.to_dict() for s in suites], "suite_required": suite is not None,
        "no_suite": not suites}, run=run_id, actor=who)


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


def revoke(ledger: Ledger, run_dir: str | os.PathLike[str], *, approver: str | None, reason: str) -> Event:
    """Record ``model.revoked`` for the run's latest promotion that is still standing (nothing is deleted)."""
    who = _approver(approver)
    if not (reason or "").strip():
        raise ConfigError("revoking a promotion needs a reason (--reason TEXT)")
    folder = Path(run_dir)
    run_id = str(_config(folder).get("run_id") or folder.name)
    standing = [p for p in promotions(ledger, run_id) if p["revoked"] is None]
    if not standing:
        raise ConfigError(f"run {run_id}: no standing promotion to revoke in {ledger.location}")
    p = standing[-1]
    return ledger.append("model.revoked", {
        "promotion_seq": p["seq"], "stage": p.get("stage"), "variant": p.get("variant"),
        "weights_sha256": p.get("weights_sha256"), "approver": who, "reason": reason}, run=run_id, actor=who)
