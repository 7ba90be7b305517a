"""Training commands: train, the baselines, the quickstart, the learning curve, compare and systems A/B."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import (
    EncoderModel,
    LLMModel,
    Opt,
    Progress,
    SetKeys,
    Verbose,
    baseline_app,
    command,
    fail,
    fetch_missing,
    overrides,
    setup_logging,
)


@command()
def train(
    config: Annotated[str | None, Opt(help="YAML config file, or a bundled name (quickstart, conll2003)")] = None,
    model: Annotated[str | None, Opt(help="backbone: alias, hub id, dir or .gguf (model.backbone)")] = None,
    train_data: Annotated[str | None, Opt("--train", help="training data (file or conll2003:train)")] = None,
    dev: Annotated[str | None, Opt(help="dev data for model selection")] = None,
    test: Annotated[str | None, Opt(help="test data, evaluated at the end (none given: no test step, unless "
                                         "the training data is a bundled corpus)")] = None,
    output: Annotated[str | None, Opt(help="run directory")] = None,
    mode: Annotated[str | None, Opt(help="lora | full | frozen")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after N optimizer steps (overrides epochs)")] = None,
    epochs: Annotated[float | None, Opt(help="training epochs")] = None,
    lr: Annotated[float | None, Opt(help="backbone learning rate")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    max_train_sentences: Annotated[int | None, Opt(help="use the first N training sentences")] = None,
    init: Annotated[str | None, Opt(help="continue from this saved model dir (RUN/model): its weights, labels and "
                                         "model section; types new in the data are added (training.init)")] = None,
    set_: SetKeys = None,
    resume: Annotated[bool, Opt(help="continue from the last checkpoint in OUTPUT/checkpoints")] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Train a model from a config (+ overrides), keep the best on dev, evaluate on test."""
    setup_logging(verbose)
    from ..config import load_config
    from ..training.train import train as run_train

    flags = {"model.backbone": model, "data.train": train_data, "data.dev": dev, "data.test": test, "output": output,
             "training.mode": mode, "training.max_steps": max_steps, "training.epochs": epochs,
             "training.learning_rate": lr, "training.seed": seed, "data.max_train_sentences": max_train_sentences,
             "training.init": init}
    run_train(load_config(config, overrides(flags, set_)), resume=resume, progress=progress)


@command()
def adapt(
    model: Annotated[str, Opt(help="backbone to adapt: alias, hub id, dir or .gguf")] = "gemma3-270m",
    pool: Annotated[str, Opt(help="unlabelled text: a file `predict` reads, or a bundled split (conll2003:train); "
                                  "never the dev or test text you will score on")] = "conll2003:train",
    output: Annotated[str, Opt(help="the adapted backbone's dir (then: train --model OUTPUT)")] = "runs/adapted",
    minutes: Annotated[float | None, Opt(help="stop after this many minutes of training")] = None,
    max_steps: Annotated[int | None, Opt(help="optimizer steps (default: the pool once, or --max-tokens)")] = None,
    max_tokens: Annotated[int | None, Opt(help="tokens to train on")] = None,
    set_: SetKeys = None,
    resume: Annotated[bool, Opt(help="continue from the last checkpoint in OUTPUT/checkpoints")] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Adapt a backbone to bidirectional attention on unlabelled text before fine-tuning (masked next-token
    prediction for a decoder, as LLM2Vec; masked-LM for an encoder). --set takes the adapt section's keys
    (mask_ratio, max_length, batch_size, learning_rate, unmask, ...)."""
    setup_logging(verbose)
    from pydantic import ValidationError

    from ..config import AdaptConfig, ConfigError, first_error
    from ..training.adapt import adapt as run_adapt

    flags = {"backbone": model, "pool": pool, "output": output, "minutes": minutes, "max_steps": max_steps,
             "max_tokens": max_tokens}
    try:
        cfg = AdaptConfig.model_validate(overrides(flags, set_))
    except ValidationError as e:
        raise ConfigError(f"adapt: {first_error(e)}") from None
    record = run_adapt(cfg, resume=resume, progress=progress)
    print(f"adapted {record['backbone']} -> {cfg.output}: {record['steps']} steps, {record['tokens_seen']:,} tokens, "
          f"{record['minutes']} min; held-out masked-token loss {record['heldout_loss_before']} -> "
          f"{record['heldout_loss_after']}")


@command("encoder", baseline_app)
def baseline_encoder(
    config: Annotated[str | None, Opt(help="run config whose data section to reuse (e.g. quickstart)")] = "quickstart",
    model: EncoderModel = None,
    output: Annotated[str, Opt(help="run directory")] = "runs/encoder",
    epochs: Annotated[float | None, Opt()] = None,
    max_steps: Annotated[int | None, Opt()] = None,
    lr: Annotated[float | None, Opt()] = None,
    set_: SetKeys = None,
    resume: Annotated[bool, Opt()] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Fine-tune a BERT-style encoder token classifier (dropout + linear, cross-entropy) on the same data."""
    setup_logging(verbose)
    from ..baselines.encoder import encoder_config
    from ..training.train import train as run_train

    flags = {"model.backbone": model, "training.epochs": epochs, "training.max_steps": max_steps,
             "training.learning_rate": lr, "output": output}
    run_train(encoder_config(config, overrides(flags, set_)), resume=resume, progress=progress)


@command("prompt", baseline_app)
def baseline_prompt(
    config: Annotated[str | None, Opt(help="run config whose data section to use")] = "quickstart",
    provider: Annotated[str, Opt(help="openai | anthropic")] = "openai",
    model: Annotated[str | None, Opt(help="model id (default: the local server's model)")] = None,
    base_url: Annotated[str | None, Opt(help="OpenAI-compatible endpoint; none + no key = start a local one")] = None,
    k_shot: Annotated[int, Opt(help="examples from the training data in the prompt")] = 3,
    max_sentences: Annotated[int | None, Opt(help="first N test sentences (0 = all)")] = 100,
    output: Annotated[str, Opt(help="run directory")] = "runs/prompt",
    set_: SetKeys = None,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Prompt a chat LLM for the entities of each test sentence (JSON), align, score with the same scorer."""
    setup_logging(verbose)
    from ..baselines import prompt as pb
    from ..config import load_config, parse_set

    opts = {"provider": provider, "base_url": base_url, "k_shot": k_shot, **parse_set(set_)}
    if model:
        opts["model"] = model
    pb.run(load_config(config), pb.PromptConfig.from_options(opts), output, max_sentences or None, progress)


def _quickstart_help() -> str:
    """The quickstart's --help, from its config (a help typed by hand went stale: it named SmolLM2 and "~10 min")."""
    from ..config import load_config

    c = load_config("quickstart", {})
    return (f"Train -> evaluate the quickstart, offline: {c.model.backbone}, {c.training.mode} fine-tuning on the "
            f"first {c.data.max_train_sentences} sentences of {c.data.train} for {c.training.epochs:g} epoch(s), the "
            f"best model on {c.data.max_dev_sentences} sentences of {c.data.dev}, tested on all of {c.data.test}.")


@command(help=_quickstart_help())
def quickstart(
    output: Annotated[str, Opt(help="run directory")] = "runs/quickstart",
    resume: Annotated[bool, Opt(help="continue an interrupted quickstart")] = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(verbose)
    from ..config import load_config
    from ..training.train import train as run_train

    cfg = load_config("quickstart", {"output": output})
    fetch_missing([cfg.model.backbone])
    typer.echo(f"llm-ner quickstart: {cfg.model.backbone}, {cfg.training.mode} fine-tuning on the first "
               f"{cfg.data.max_train_sentences} sentences of {cfg.data.train}, test on {cfg.data.test}")
    run_train(cfg, resume=resume, progress=True)


@command("learning-curve")
def learning_curve(
    config: Annotated[str, Opt(help="run config whose data and LLM recipe to use")] = "quickstart",
    sizes: Annotated[str, Opt(help="training sentences per point, comma-separated; 'all' = the whole split")
                     ] = "250,500,1000,2000,4000,all",
    seeds: Annotated[str, Opt(help="seeds, comma-separated (a seed is also the subset's shuffle)")] = "1,2,3",
    seeds_up_to: Annotated[int, Opt(help="sizes above this run the first seed only")] = 2000,
    systems: Annotated[str, Opt(help="llm,encoder or one of them")] = "llm,encoder",
    llm_model: LLMModel = None,
    encoder_model: EncoderModel = None,
    output: Annotated[str, Opt(help="directory for the runs and results.{json,md}")] = "runs/curve",
    set_: SetKeys = None,
    llm_set: Annotated[list[str] | None, Opt("--llm-set", help="override a config key for the LLM's runs")] = None,
    encoder_set: Annotated[list[str] | None, Opt("--encoder-set", help="override a config key for the encoder's "
                                                 "runs (its own recipe)")] = None,
    keep_models: Annotated[bool, Opt(help="keep each run's checkpoints and model (by default dropped once its "
                                            "point is recorded)")] = False,
    adapt: Annotated[bool, Opt(help="adapt each backbone on the training split's text first (llm-ner adapt, once, "
                                     "in OUTPUT/adapted) and train every point from it")] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """How much labelled data is needed: test F1 of the LLM and the encoder against training sentences, over seeds."""
    setup_logging(verbose)
    from ..active.curve import SYSTEMS, table
    from ..active.curve import learning_curve as run_curve
    from ..config import parse_set

    chosen = [s.strip() for s in systems.split(",") if s.strip()]
    if not chosen or set(chosen) - set(SYSTEMS):
        fail(f"--systems {systems!r}: choose from {', '.join(SYSTEMS)}")
    try:
        points = [None if x.strip() == "all" else int(x) for x in sizes.split(",") if x.strip()]
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        fail(f"--sizes {sizes!r} / --seeds {seeds!r}: give whole numbers (sizes may say 'all'), comma-separated")
    if not points or not seed_list or any(p is not None and p < 1 for p in points):
        fail("--sizes and --seeds need at least one value each, sizes at least 1")
    from ..comparison.compare import sides

    own = {"llm": parse_set(llm_set), "encoder": parse_set(encoder_set)}
    models = sides(config, llm_model or own["llm"].get("model.backbone"),
                   encoder_model or own["encoder"].get("model.backbone"), parse_set(set_))
    fetch_missing([models[s] for s in chosen], progress)
    if adapt:
        models = adapted_sides(config, models, chosen, output, progress)
    own = {s: {**own[s], "model.backbone": models[s]} for s in own}
    rows = run_curve(config, points, seed_list, chosen, output, seeds_up_to, parse_set(set_), own, progress,
                     keep_models)
    typer.echo(table(rows))


def adapted_sides(config: str, models: dict[str, str], chosen: list[str], output: str, progress: bool) -> dict:
    """Each chosen side's backbone adapted on the config's training text (one adapted backbone, reused)."""
    from pathlib import Path

    from ..config import load_config
    from ..training.adapt import adapted_backbone

    pool = load_config(config).data.train
    return {s: adapted_backbone(m, pool, Path(output), progress) if s in chosen else m for s, m in models.items()}


@command()
def compare(
    config: Annotated[str, Opt(help="run config shared by all systems (data, split)")] = "quickstart",
    output: Annotated[str, Opt(help="directory for the runs and comparison.{md,json}")] = "runs/compare",
    prompt_sentences: Annotated[int, Opt(help="test sentences for the prompted baseline (a request each)")] = 100,
    systems: Annotated[str, Opt(help="comma-separated subset of llm,encoder,prompt")] = "llm,encoder,prompt",
    llm_run: Annotated[str | None, Opt(help="reuse this finished LLM run dir")] = None,
    encoder_run: Annotated[str | None, Opt(help="reuse this finished encoder run dir")] = None,
    prompt_run: Annotated[str | None, Opt(help="reuse this finished prompt run dir")] = None,
    llm_model: LLMModel = None,
    encoder_model: EncoderModel = None,
    rerun: Annotated[bool, Opt(help="re-run systems even if their run dir is finished")] = False,
    adapt: Annotated[bool, Opt(help="adapt the LLM and the encoder on the training split's text first (llm-ner "
                                     "adapt, in OUTPUT/adapted)")] = False,
    progress: Progress = True,
) -> None:
    """Train/evaluate (or reuse) the LLM model, the encoder and the prompted baseline; print one table."""
    setup_logging()
    from ..comparison.compare import SYSTEMS, sides, table_markdown
    from ..comparison.compare import compare as run_compare
    from ..config import config_path

    config = str(config_path(config))  # the systems run in subprocesses: pass them a path
    chosen = [s.strip() for s in systems.split(",") if s.strip()]
    if not chosen or set(chosen) - set(SYSTEMS):
        fail(f"--systems {systems!r}: choose from {', '.join(SYSTEMS)}")
    runs = {"llm": llm_run, "encoder": encoder_run, "prompt": prompt_run}
    models = sides(config, llm_model, encoder_model)
    fetch_missing([models[s] for s in chosen if s in models and not runs[s]], progress)
    if adapt:
        models = adapted_sides(config, models, [s for s in chosen if s in models and not runs[s]], output, progress)
    rows = run_compare(config, output, prompt_sentences, chosen, runs, rerun, progress, models)
    typer.echo(table_markdown(rows))


@command()
def systems(
    keep: Annotated[str, Opt(help="types system B keeps, comma-separated (e.g. PER,ORG,LOC,DIS,ANIM)")],
    config: Annotated[str, Opt(help="run config (data, model, training) shared by A and B")] = "quickstart",
    output: Annotated[str, Opt(help="directory for system_a/, system_b/ and systems_ab.{md,json}")] = "runs/ab",
    set_: SetKeys = None,
    rerun: Annotated[bool, Opt(help="retrain even if a finished run exists")] = False,
    progress: Progress = True,
) -> None:
    """System A (all entity types) vs system B (kept subset, others -> O) on the same test set and scorer."""
    setup_logging()
    from ..comparison.systems import run_ab, table
    from ..config import load_config

    cfg = load_config(config, overrides({}, set_))
    typer.echo(table(run_ab(cfg, [k.strip() for k in keep.split(",") if k.strip()], output, rerun, progress)))
