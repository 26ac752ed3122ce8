"""``nnforge federate RECIPE``: run a recipe as a federated job — its model and its ``train`` step's optimizer
become the clients' local training, the data is split among ``--clients`` clients, a Flower strategy aggregates
(on this machine with Flower's simulation engine, or with ``--superlink HOST:PORT`` on a running SuperLink and its
SuperNodes, each holding one partition).

A recipe with a ``federate`` step runs it, with the options given here applied; otherwise its ``train`` step is
replaced by a ``federate`` step that keeps the train step's optimizer, its options and its batch size. Every round
lands in the ledger (``federated.round``) and the report (appended when the recipe has no report step) gets a
federated-learning section. Bad options exit 2 before anything is written.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nnforge.cli._common import console, key_values, metrics_table


def federated_recipe(name: str, overrides: list[str], given: dict[str, Any]) -> Any:
    """The recipe ``name`` with a ``federate`` step carrying ``given`` (its train step replaced, or its own
    federate step updated)."""
    import yaml
    from pydantic import ValidationError

    from nnforge.config import describe_validation_error
    from nnforge.errors import ConfigError
    from nnforge.recipes import load_recipe
    from nnforge.recipes.schema import parse_recipe
    from nnforge.recipes.steps.federate import FederateStepConfig

    rec = load_recipe(name, overrides)
    doc = yaml.safe_load(rec.source)
    names = [s.name for s in rec.steps]
    if "federate" in names:
        at = names.index("federate")
        step = {**rec.steps[at].config.model_dump(mode="json", exclude_defaults=True), **given}
    elif "train" in names:
        at = names.index("train")
        train: Any = rec.steps[at].config  # the train step's TrainStepConfig
        local = {"optimizer": train.optimizer, "optimizer_options": dict(train.optimizer_options),
                 "batch_size": train.batch_size, **({"block_size": train.block_size} if train.block_size else {})}
        step = {**given, "local": {**local, **given.get("local", {})}}
    elif "finetune" in names:  # a LoRA fine-tune becomes federated LoRA: its adapters, optimizer and batch size
        at = names.index("finetune")
        ft: Any = rec.steps[at].config  # the finetune step's FinetuneStepConfig
        local = {"optimizer": "adamw", "optimizer_options": {"lr": ft.train.lr, "weight_decay": ft.train.weight_decay},
                 "batch_size": ft.train.batch_size}
        step = {**given, "lora": ft.lora.model_dump(mode="json"), "local": {**local, **given.get("local", {})}}
    else:
        raise ConfigError(f"recipe {rec.name!r} has no train, finetune or federate step to federate (its steps: "
                          f"{', '.join(names)})")
    try:
        config = FederateStepConfig.model_validate(step)
    except ValidationError as exc:
        raise ConfigError("; ".join(describe_validation_error(exc, owner="the federate step"))) from None
    doc["steps"][at] = {"federate": config.model_dump(mode="json", exclude_defaults=True)}
    if "report" not in names:  # the federated section is what a federated run is read by
        doc["steps"].append("report")
    return parse_recipe(doc, source=yaml.safe_dump(doc, sort_keys=False), path=rec.path)


def federate(
    recipe: Annotated[str, typer.Argument(help="A recipe: a built-in name (e.g. digits) or a YAML file.")],
    clients: Annotated[int | None, typer.Option(min=2, help="Number of clients (default 10).")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Federated rounds (default 10).")] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg (default), fedprox, fedadam, scaffold, fedmedian, "
                                                 "fedtrimmedavg, krum, bulyan, …")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="A strategy option, key=value: -o "
                                                     "proximal_mu=0.01")] = None,
    partition: Annotated[str | None, typer.Option(help="How the data is split: iid (default), dirichlet, shards, "
                                                  "source (whole plays or documents per client).")] = None,
    partition_option: Annotated[list[str] | None, typer.Option("--partition-option", "-p", help="A partition "
                                                               "option, key=value: -p alpha=0.5")] = None,
    local_epochs: Annotated[float | None, typer.Option(help="Passes over a client's data per round (array data).")] = None,
    local_steps: Annotated[int | None, typer.Option(help="Optimizer steps per client per round (needed for a "
                                                    "character corpus).")] = None,
    fraction: Annotated[float | None, typer.Option(help="Share of the clients sampled each round (default 1).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Differential privacy: the run's epsilon budget (delta 1e-5; "
                                                  "noise calibrated to spend it over the rounds).")] = None,
    privacy_level: Annotated[str, typer.Option(help="record (DP-SGD on the clients, Opacus) or client (Flower's "
                                               "central DP).")] = "record",
    secure_aggregation: Annotated[bool, typer.Option("--secure-aggregation", help="Clients send their updates "
                                                     "encrypted (TenSEAL CKKS); the server sums ciphertexts.")] = False,
    secure_method: Annotated[str, typer.Option(help="With --secure-aggregation: he (TenSEAL CKKS, a key holder "
                                               "decrypts the sum) or secagg+ (Flower's SecAgg+ masks, no key "
                                               "holder).")] = "he",
    simulate: Annotated[bool, typer.Option("--simulate", help="Run every client on this machine with Flower's "
                                           "simulation engine (the default).")] = False,
    superlink: Annotated[str | None, typer.Option(help="Run on Flower's deployment engine: the SuperLink's "
                                                  "address, host:port; its SuperNodes hold the clients' data "
                                                  "(one partition-id each).")] = None,
    root_certificates: Annotated[str | None, typer.Option(help="With --superlink: the CA certificate (PEM) that "
                                                          "signed the SuperLink's TLS certificate.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="With --superlink: no TLS (loopback experiments "
                                           "only; refused unless given).")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a recipe field: key=value.")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where the run lands.")] = "runs",
    ledger: Annotated[str | None, typer.Option(help="Ledger database (default: .nnforge/ledger.db).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a recipe's model by federated learning: clients keep their part of the data, a Flower strategy
    aggregates, every round is recorded in the ledger."""
    from nnforge.cli.run import execute
    from nnforge.errors import ConfigError

    given: dict[str, Any] = {k: v for k, v in {"clients": clients, "rounds": rounds, "strategy": strategy,
                                                "partition": partition, "fraction_train": fraction}.items()
                             if v is not None}
    if option:
        given["strategy_options"] = key_values(option, "--option", "proximal_mu=0.01")
    if partition_option:
        given["partition_options"] = key_values(partition_option, "--partition-option", "alpha=0.5")
    if epsilon is not None:
        given["privacy"] = {"epsilon": epsilon, "level": privacy_level}
    if secure_aggregation:
        given["secure"] = {"method": secure_method}
    elif secure_method != "he":
        raise ConfigError("--secure-method says how to aggregate securely: give --secure-aggregation too")
    if superlink is not None:
        if simulate:
            raise ConfigError("--simulate and --superlink name two engines; give one")
        given["deployment"] = {"superlink": superlink, "root_certificates": root_certificates,
                               "insecure": insecure}
    elif root_certificates is not None or insecure:
        raise ConfigError("--root-certificates and --insecure say how to reach a SuperLink: give --superlink too")
    local = {k: v for k, v in {"epochs": local_epochs, "steps": local_steps}.items() if v is not None}
    if local:
        given["local"] = local
    rec = federated_recipe(recipe, set_ or [], given)
    console.print(f"[bold]nnforge federate[/] {rec.name}: {len(rec.steps)} steps ({', '.join(s.name for s in rec.steps)})")
    execute(rec, runs_dir=runs_dir, ledger=ledger, actor=actor, json_=json_, summary=_table)


def _table(metrics: dict[str, Any]) -> None:
    keys = [k for k in metrics if k.startswith("federated_") or k in ("val_accuracy", "val_loss")]
    metrics_table("federated", metrics, keys)
