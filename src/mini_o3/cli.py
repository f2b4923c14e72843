"""The `mini-o3` command line: one command per job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mini_o3.agent.loop import EpisodeConfig, run_episode
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import INFERENCE_LIMITS, ZoomEnv
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ImageLoadError, ResizePolicy, open_image
from mini_o3.agent.policy import Policy, SamplingParams
from mini_o3.agent.trajectory import Status, TurnRecord
from mini_o3.jsonl import safe_text

if TYPE_CHECKING:
    from mini_o3.models.episode_settings import EpisodeSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Vision-language agents that search high-resolution images by zooming.")
console = Console()


TIMEOUT_HELP = "Seconds to wait for each server reply before retrying (default: the HTTP client's, 120)."
RETRIES_HELP = "Retries of a failed request (timeouts, 429, 5xx, dropped connections) before the episode ends in error (default 5)."
PIXEL_LIMIT_HELP = "Refuse images with more pixels than this (checked on the header, before any decode)."


def fail(message: str) -> NoReturn:
    """A user error: one red line naming the fix, exit status 2."""
    console.print(f"[red]error:[/red] {escape(safe_text(message))}", soft_wrap=True)
    raise typer.Exit(2)


def http_options(timeout: Optional[float], retries: Optional[int]) -> dict[str, float | int]:
    """`--timeout` and `--retries` as HttpPolicy keywords (only those given), checked."""
    if timeout is not None and not timeout > 0:
        fail(f"--timeout must be more than 0 seconds, got {timeout:g}")
    if retries is not None and retries < 0:
        fail(f"--retries must be 0 or more, got {retries}")
    given = {"timeout_s": timeout, "max_retries": retries}
    return {name: value for name, value in given.items() if value is not None}


def build_policy(
    api: Optional[str],
    model: Optional[str],
    model_path: Optional[Path],
    api_key_env: str = "OPENAI_API_KEY",
    timeout: Optional[float] = None,
    retries: Optional[int] = None,
) -> Policy:
    """An HTTP policy for `--api URL[,URL...] --model NAME`, or a local one for `--model-path DIR`."""
    if (api is None) == (model_path is None):
        raise typer.BadParameter("give either --api URL --model NAME (a server) or --model-path DIR (a local checkpoint)")
    options = http_options(timeout, retries)
    if api is not None:
        if not model:
            raise typer.BadParameter("--api needs --model NAME (the model name the server serves)")
        from mini_o3.policies.http import HttpPolicy

        return HttpPolicy([url.strip() for url in api.split(",") if url.strip()], model=model, api_key_env=api_key_env, **options)
    from mini_o3.models.backbone import CheckpointError
    from mini_o3.policies.local import LocalPolicy

    try:
        return LocalPolicy(model_path)
    except CheckpointError as error:
        fail(str(error))


@contextmanager
def input_errors_as_one_line(*also: type[BaseException]) -> Iterator[None]:
    """Turn errors that name a user's checkpoint or data (and `also`) into one line and exit 2."""
    from mini_o3.data.benchmarks.common import DatasetError
    from mini_o3.models.backbone import CheckpointError

    try:
        yield
    except (CheckpointError, DatasetError, *also) as error:
        fail(str(error))


def check_context(max_context: int) -> None:
    """Refuse a context window that leaves no room once the episode's reserve is kept free."""
    if max_context <= INFERENCE_LIMITS.context_reserve:
        raise typer.BadParameter(
            f"--max-context {max_context} leaves no room: episodes stop {INFERENCE_LIMITS.context_reserve:,} tokens short of "
            "the window; give the server's --max-model-len (vLLM), e.g. 16384"
        )


def print_config(title: str, config: object) -> None:
    """Print a job's full configuration before it starts."""
    console.print(f"[bold]{title}[/bold]")
    console.print_json(json.dumps(asdict(config) if hasattr(config, "__dataclass_fields__") else config, default=str))


EPISODE_FIELDS = ("view_max_pixels", "view_min_pixels", "max_turns", "max_new_tokens", "numbering")
"""The episode settings search and eval take from a checkpoint's mini_o3_episode.json unless a flag says otherwise."""


def episode_settings(model_path: Optional[Path | str], **flags: object) -> "EpisodeSettings":
    """The episode settings of a job on `model_path`: flags first, then the checkpoint's file, then the paper's; printed."""
    from mini_o3.models.episode_settings import resolve_settings

    try:
        resolved = resolve_settings(model_path, EPISODE_FIELDS, **flags)
    except ValueError as error:
        raise typer.BadParameter(str(error))
    console.print("[bold]episode settings[/bold] (flag > the checkpoint's mini_o3_episode.json > default):\n" + escape(resolved.describe()), soft_wrap=True)
    return resolved.settings


def print_turn(env: ZoomEnv, turn: TurnRecord) -> None:
    """Print one assistant turn and what the environment answered."""
    number = len(env.trajectory.turns)
    console.rule(f"turn {number} · {turn.kind}")
    console.print(escape(turn.text.strip()) or "[dim](empty)[/dim]")
    if turn.feedback == "observation":
        view = env.trajectory.views[turn.view]
        source = "original_image" if view.source == 0 else f"observation_{view.source}"
        console.print(
            f"[cyan]→ observation_{view.index}[/cyan]: {list(view.relative_box)} on {source} = pixels {list(view.box)} "
            f"of the original, shown at {view.size[0]}x{view.size[1]}"
        )
    elif turn.feedback == "error":
        console.print(f"[yellow]→ error shown to the model:[/yellow] {escape(turn.error or '')}")


@app.command()
def search(
    image: Path = typer.Argument(..., help="The image to ask about."),
    question: str = typer.Argument(..., help="The question."),
    api: Optional[str] = typer.Option(None, help="OpenAI-compatible server URL(s), comma-separated."),
    model: Optional[str] = typer.Option(None, help="Model name on the server."),
    model_path: Optional[Path] = typer.Option(None, help="A local checkpoint directory (Qwen2.5-VL, Qwen3-VL or Qwen3.5)."),
    max_turns: Optional[int] = typer.Option(None, help="Assistant turns at most [default: the checkpoint's, else 32]."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (the paper evaluates at 1.0)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per turn at most [default: the checkpoint's, else 8192]."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    numbering: Optional[str] = typer.Option(None, help="Observation labels: reference or consistent [default: the checkpoint's, else reference]."),
    max_pixels: Optional[int] = typer.Option(None, help="Images are shown at most this many pixels [default: the checkpoint's, else 2,000,000]."),
    min_pixels: Optional[int] = typer.Option(None, help="Images are shown at least this many pixels [default: the checkpoint's, else 40,000]."),
    out: Optional[Path] = typer.Option(None, help="Where to write the trajectory, the crops and boxes.png."),
    image_pixel_limit: int = typer.Option(DEFAULT_IMAGE_PIXEL_LIMIT, help=PIXEL_LIMIT_HELP),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    timeout: Optional[float] = typer.Option(None, help=TIMEOUT_HELP),
    retries: Optional[int] = typer.Option(None, help=RETRIES_HELP),
    max_context: int = typer.Option(INFERENCE_LIMITS.max_context_tokens, help="The model's context window in tokens: the server's --max-model-len when lower than the paper's 32,768."),
) -> None:
    """Answer QUESTION about IMAGE by zooming, printing every turn; exit status 1 when the episode ends in error."""
    from mini_o3.eval.draw import draw_zoom_boxes
    from mini_o3.agent.store import TrajectoryStore

    if numbering not in (None, "reference", "consistent"):
        raise typer.BadParameter("--numbering must be 'reference' or 'consistent'")
    question = safe_text(question)  # bytes of the command line that are not UTF-8 arrive as lone surrogates
    http_options(timeout, retries)  # checked before any work
    check_context(max_context)
    try:
        original = open_image(image, image_pixel_limit)
    except ImageLoadError as error:
        fail(str(error))
    settings = episode_settings(
        model_path, max_turns=max_turns, max_new_tokens=max_new_tokens, numbering=numbering,
        view_max_pixels=max_pixels, view_min_pixels=pixel_minimum(min_pixels, max_pixels),
    )
    policy = build_policy(api, model, model_path, api_key_env, timeout, retries)
    config = EpisodeConfig(
        limits=replace(INFERENCE_LIMITS, max_turns=settings.max_turns, numbering=settings.numbering, max_context_tokens=max_context),
        sampling=SamplingParams(temperature=temperature, max_new_tokens=settings.max_new_tokens, seed=seed),
        resize=ResizePolicy(max_pixels=settings.view_max_pixels, min_pixels=settings.view_min_pixels),
        pixel_limit=image_pixel_limit,
    )
    print_config("search", {"image": str(image), "question": question, **asdict(config)})
    sample = Sample(id=image.stem, image=image, question=question, answer="")
    episode = run_episode(policy, sample, config, on_turn=print_turn)
    trajectory = episode.trajectory
    console.rule("result")
    console.print(f"status: [bold]{trajectory.status.value}[/bold] after {trajectory.num_turns} turns, {trajectory.num_zooms} zooms")
    if trajectory.error:
        console.print(f"[red]error:[/red] {escape(trajectory.error)}")
    console.print(f"answer: [bold green]{escape(trajectory.answer or '(none)')}[/bold green]")
    out = out or Path("runs") / f"search-{time.strftime('%Y%m%d-%H%M%S')}"
    with TrajectoryStore(out) as store:
        store.add(episode)
    draw_zoom_boxes(original, trajectory).save(out / "boxes.png")
    console.print(f"wrote {store.path} and {out / 'boxes.png'}")
    if trajectory.status is Status.ERROR:
        raise typer.Exit(1)


@app.command()
def synth(
    out: Path = typer.Option(..., help="Folder of the set (resumes when it already holds part of it)."),
    n: int = typer.Option(100, help="Number of problems."),
    level: str = typer.Option("medium", help="easy, medium, hard, or grid (the demo world)."),
    size: int = typer.Option(4096, help="Long side of the images in pixels."),
    seed: int = typer.Option(0, help="Seed of the set: the same seed gives the same bytes."),
    workers: int = typer.Option(1, help="Processes to render with."),
) -> None:
    """Procedurally render VisualProbe-style problems that can only be answered by zooming."""
    from mini_o3.data.synth import SynthError, synthesize

    print_config("synth", {"out": str(out), "n": n, "level": level, "size": size, "seed": seed, "workers": workers})
    try:
        report = synthesize(out, n, level, size, seed, workers=workers, progress=True)
    except SynthError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    console.print(report.summary())


eval_app = typer.Typer(add_completion=False, help="Evaluate a policy: Avg@K, accuracy per turn budget, a report.")
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def eval_run(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Dataset spec, e.g. vstar:DIR, hrbench:FILE.tsv, synthetic:DIR, or a path."),
    api: Optional[str] = typer.Option(None, help="OpenAI-compatible server URL(s), comma-separated: they share the load."),
    model: Optional[str] = typer.Option(None, help="Model name on the server."),
    model_path: Optional[Path] = typer.Option(None, help="A local checkpoint directory (Qwen2.5-VL, Qwen3-VL or Qwen3.5)."),
    samples: int = typer.Option(1, help="K sampled runs per question (Avg@K)."),
    max_turns: Optional[int] = typer.Option(None, help="Assistant turns at most; every smaller budget is read off the same run [default: the checkpoint's, else 32; 1 with --prompt direct]."),
    concurrency: int = typer.Option(32, help="Episodes in flight."),
    out: Path = typer.Option(Path("runs/eval"), help="Run directory; the same command again resumes it."),
    prompt: str = typer.Option("zoom", help="zoom: the released prompt with its zoom tool; direct: the no-zoom baseline (that prompt without the zoom sentence, one turn)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (the paper evaluates at 1.0)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens per turn at most [default: the checkpoint's, else 8192]."),
    seed: int = typer.Option(0, help="Base seed of the per-turn sampling seeds."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    skip_bad: bool = typer.Option(False, help="Skip and count bad records instead of stopping."),
    retry_errors: bool = typer.Option(False, help="Run again the episodes recorded as errors."),
    max_pixels: Optional[int] = typer.Option(None, help="Images are shown at most this many pixels [default: the checkpoint's, else 2,000,000]."),
    min_pixels: Optional[int] = typer.Option(None, help="Images are shown at least this many pixels [default: the checkpoint's, else 40,000, or --max-pixels when lower]."),
    numbering: Optional[str] = typer.Option(None, help="Observation labels: reference or consistent [default: the checkpoint's, else reference]."),
    image_pixel_limit: int = typer.Option(DEFAULT_IMAGE_PIXEL_LIMIT, help=PIXEL_LIMIT_HELP),
    timeout: Optional[float] = typer.Option(None, help=TIMEOUT_HELP),
    retries: Optional[int] = typer.Option(None, help=RETRIES_HELP),
    judge_api: Optional[str] = typer.Option(None, help="An OpenAI-compatible judge endpoint (optional; rules score by default)."),
    judge_model: Optional[str] = typer.Option(None, help="The judge's model name."),
    judge_mode: str = typer.Option("rescue", help="rescue: judge only rule misses; all: the judge decides every answer."),
    judge_api_key_env: str = typer.Option("MINI_O3_JUDGE_API_KEY", help="Environment variable holding the judge's key."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the policy server's key."),
    max_context: int = typer.Option(INFERENCE_LIMITS.max_context_tokens, help="The model's context window in tokens: the server's --max-model-len when lower than the paper's 32,768."),
) -> None:
    """Evaluate a policy on a dataset, resumably, and write metrics.json and index.html."""
    if ctx.invoked_subcommand is not None:
        return
    from mini_o3.eval.runner import EvalConfig, run_eval
    from mini_o3.eval.judge import JudgeConfig

    if data is None:
        raise typer.BadParameter("--data SPEC is required (e.g. synthetic:runs/synth-hard or vstar:/data/vstar_bench)")
    check_context(max_context)
    judge = None
    if judge_api is not None:
        if not judge_model:
            raise typer.BadParameter("--judge-api needs --judge-model")
        judge = JudgeConfig(base_url=judge_api, model=judge_model, api_key_env=judge_api_key_env)
    http_options(timeout, retries)  # checked before any work
    settings = episode_settings(
        model_path, max_turns=max_turns or (1 if prompt == "direct" else None), max_new_tokens=max_new_tokens,
        numbering=numbering, view_max_pixels=max_pixels, view_min_pixels=pixel_minimum(min_pixels, max_pixels),
    )
    try:
        config = EvalConfig(
            data=data, out=out, samples=samples, max_turns=settings.max_turns, prompt=prompt,
            concurrency=concurrency, temperature=temperature,
            max_new_tokens=settings.max_new_tokens, seed=seed, limit=limit, skip_bad=skip_bad, retry_errors=retry_errors,
            max_pixels=settings.view_max_pixels, min_pixels=settings.view_min_pixels, numbering=settings.numbering,
            judge=judge, judge_mode=judge_mode, pixel_limit=image_pixel_limit, max_context_tokens=max_context,
        )
    except ValueError as error:
        fail(str(error))
    from mini_o3.data.benchmarks.common import DatasetError
    from mini_o3.eval.run_dir import RunDirError

    policy = build_policy(api, model, model_path, api_key_env, timeout, retries)
    try:
        result = run_eval(config, policy, console=console)
    except (RunDirError, DatasetError) as error:  # a user's folder or file: one line, no traceback
        fail(str(error))
    console.print(f"report: {result.run_dir / 'index.html'}")


DEFAULT_MIN_PIXELS = 40_000


def pixel_minimum(min_pixels: Optional[int], max_pixels: Optional[int]) -> Optional[int]:
    """--min-pixels as given; its default lowered (and said so) under a --max-pixels below it; a given one above is an error."""
    if max_pixels is None:
        return min_pixels
    if min_pixels is None:
        if max_pixels < DEFAULT_MIN_PIXELS:
            console.print(f"[yellow]--min-pixels lowered to {max_pixels} (its default, {DEFAULT_MIN_PIXELS:,}, is above --max-pixels)[/yellow]")
            return max_pixels
        return None
    if min_pixels > max_pixels:
        fail(f"--min-pixels ({min_pixels:,}) is above --max-pixels ({max_pixels:,}); lower --min-pixels or raise --max-pixels")
    return min_pixels


@eval_app.command("compare")
def eval_compare(
    run_a: Path = typer.Argument(..., help="First run directory (e.g. the no-zoom baseline)."),
    run_b: Path = typer.Argument(..., help="Second run directory (e.g. the zoom run)."),
    html: Optional[Path] = typer.Option(None, help="Also write a page with every gained and lost question here."),
    show: int = typer.Option(20, help="Gained and lost questions listed on the console, each."),
) -> None:
    """Two runs side by side, and per question what B gained and lost against A."""
    from mini_o3.eval.compare import print_comparison, write_comparison
    from mini_o3.eval.run_dir import RunDirError

    try:
        print_comparison(console, run_a, run_b, show)
        if html is not None:
            console.print(f"wrote {write_comparison(run_a, run_b, html)}")
    except RunDirError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None


@eval_app.command("rescore")
def eval_rescore(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    judge_api: Optional[str] = typer.Option(None, help="An OpenAI-compatible judge endpoint; without one, rules only."),
    judge_model: Optional[str] = typer.Option(None, help="The judge's model name."),
    judge_mode: str = typer.Option("rescue", help="rescue or all."),
    judge_api_key_env: str = typer.Option("MINI_O3_JUDGE_API_KEY", help="Environment variable holding the judge's key."),
) -> None:
    """Score a finished run again (rules or a judge) without calling the model."""
    from mini_o3.eval.runner import rescore
    from mini_o3.eval.judge import JudgeConfig

    judge = JudgeConfig(base_url=judge_api, model=judge_model or "", api_key_env=judge_api_key_env) if judge_api else None
    metrics = rescore(run_dir, judge=judge, judge_mode=judge_mode)
    console.print_json(json.dumps({key: metrics[key] for key in ("avg_at_k", "pass_at_k") if key in metrics}, default=str))


@app.command()
def collect(
    data: str = typer.Option(..., help="Dataset spec of the questions, e.g. synthetic:data/probe-medium."),
    policy: str = typer.Option("oracle", help="api, local or oracle (ground-truth boxes; synthetic data)."),
    api: Optional[str] = typer.Option(None, help="api: server URL(s), comma-separated."),
    model: Optional[str] = typer.Option(None, help="api: model name on the server."),
    model_path: Optional[str] = typer.Option(None, help="local: a checkpoint directory (Qwen2.5-VL, Qwen3-VL or Qwen3.5); its episode settings set the view pixels."),
    exemplars: Optional[str] = typer.Option(None, help="Folder of exemplar JSON files (default: the built-in ones)."),
    exemplars_per_prompt: int = typer.Option(2, help="api/local: exemplars shown before each question."),
    per_question: int = typer.Option(1, help="Accepted trajectories wanted per question."),
    rounds: int = typer.Option(1, help="Rounds; each retries the questions still lacking trajectories."),
    max_turns: int = typer.Option(16, help="Assistant turns per episode at most."),
    temperature: float = typer.Option(1.0, help="api/local sampling temperature."),
    add_accepted_to_exemplars: bool = typer.Option(False, help="Grow the exemplar pool with accepted trajectories after each round."),
    concurrency: int = typer.Option(8, help="Episodes in flight."),
    seed: int = typer.Option(0, help="Seed of plans, exemplar choice and sampling."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    skip_bad: bool = typer.Option(False, help="Skip and count bad records."),
    out: str = typer.Option("runs/collect", help="Output folder; the same command again resumes."),
    image_pixel_limit: int = typer.Option(DEFAULT_IMAGE_PIXEL_LIMIT, help=PIXEL_LIMIT_HELP),
    timeout: Optional[float] = typer.Option(None, help="api: " + TIMEOUT_HELP),
    retries: Optional[int] = typer.Option(None, help="api: " + RETRIES_HELP),
    max_context: int = typer.Option(INFERENCE_LIMITS.max_context_tokens, help="The model's context window in tokens: the server's --max-model-len when lower than the paper's 32,768."),
) -> None:
    """Collect cold-start trajectories: keep only correct, well-formed, balanced, unique ones."""
    from mini_o3.coldstart.collect import CollectConfig, CollectDirError
    from mini_o3.coldstart.collect import collect as run_collect

    if policy not in ("api", "local", "oracle"):
        raise typer.BadParameter("--policy must be api, local or oracle")
    from mini_o3.data.benchmarks import DatasetError

    options = http_options(timeout, retries)
    check_context(max_context)
    if policy == "api" and not (api and model):
        fail("--policy api needs --api URL and --model NAME (the model name the server serves)")
    if policy == "local" and not model_path:
        fail("--policy local needs --model-path DIR (a Qwen2.5-VL, Qwen3-VL or Qwen3.5 checkpoint)")
    seen: dict[str, object] = {}
    if policy == "local":
        # A local model collects with the views it was trained on (its mini_o3_episode.json).
        settings = episode_settings(model_path)
        seen = {"max_pixels": settings.view_max_pixels, "min_pixels": settings.view_min_pixels, "numbering": settings.numbering}
    try:
        config = CollectConfig(
            data=data, policy=policy, api=api, model=model, model_path=model_path, exemplars=exemplars,
            exemplars_per_prompt=exemplars_per_prompt, per_question=per_question, rounds=rounds, max_turns=max_turns,
            temperature=temperature, add_accepted_to_exemplars=add_accepted_to_exemplars, concurrency=concurrency,
            seed=seed, limit=limit, skip_bad=skip_bad, out=out, pixel_limit=image_pixel_limit,
            max_context_tokens=max_context, **options, **seen,
        )
    except ValueError as error:  # a setting out of range, named by the config
        fail(str(error))
    print_config("collect", config.to_dict())
    try:
        report = run_collect(config)
    except (CollectDirError, DatasetError) as error:
        fail(str(error))
    console.print(report.summary())


def _job_overrides(pairs: list[str]) -> dict[str, object]:
    from mini_o3.train.config import override_value

    overrides: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--set takes FIELD=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = override_value(value)
    return overrides


@app.command()
def sft(
    data: str = typer.Option(..., help="SFT dataset folder (as `mini-o3 collect` writes: OUT/sft)."),
    model_path: str = typer.Option(..., help="Starting checkpoint (a Qwen2.5-VL, Qwen3-VL or Qwen3.5 folder, or a tiny one)."),
    out: str = typer.Option(..., help="Output folder: checkpoints, log.jsonl, learning_curve.png, final/; reruns resume."),
    config: str = typer.Option("tiny-cpu", help="Preset name (tiny-cpu, qwen2.5-vl-7b) or a YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the SFT config: --set learning_rate=1e-5 (repeatable)."),
) -> None:
    """Supervised fine-tuning on cold-start trajectories, loss on assistant tokens only."""
    from mini_o3.train import load_preset, run_sft, with_overrides

    job = with_overrides(load_preset(config).sft, data=data, model_path=model_path, output_dir=out, **_job_overrides(set_))
    with input_errors_as_one_line():
        final = run_sft(job)
    console.print(f"SFT model: {final}")


@app.command()
def rl(
    data: str = typer.Option(..., help="Dataset spec of the training questions, e.g. synthetic:DIR."),
    model_path: str = typer.Option(..., help="Starting checkpoint, usually the SFT model."),
    out: str = typer.Option(..., help="Output folder: checkpoints, rollouts, log.jsonl, learning_curve.png, final/; reruns resume."),
    config: str = typer.Option("tiny-cpu", help="Preset name (tiny-cpu, qwen2.5-vl-7b) or a YAML file."),
    no_overturn_mask: bool = typer.Option(False, "--no-overturn-mask", help="Train without over-turn masking (the ablation)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the RL config: --set steps=50 (repeatable)."),
) -> None:
    """GRPO with over-turn masking, rollouts through the same episode engine as inference."""
    from mini_o3.train import load_preset, run_rl, with_overrides

    overrides = _job_overrides(set_)
    if no_overturn_mask:
        overrides["overturn_mask"] = False
    # Rollouts see as the starting checkpoint was trained to see, unless --set says otherwise;
    # the turn and token budgets are RL's own (the preset's).
    from mini_o3.models.episode_settings import read_episode_settings

    try:
        stored = read_episode_settings(model_path)
    except ValueError as error:
        raise typer.BadParameter(str(error))
    if stored is not None:
        inherited = {
            "image_max_pixels": stored.view_max_pixels, "image_min_pixels": stored.view_min_pixels, "numbering": stored.numbering,
            "max_context_tokens": stored.max_context_tokens, "context_reserve": stored.context_reserve,
        }
        taken = {key: value for key, value in inherited.items() if key not in overrides}
        console.print(f"from {model_path}/mini_o3_episode.json: {taken} (--set overrides any)")
        overrides = {**taken, **overrides}
    job = with_overrides(load_preset(config).rl, data=data, model_path=model_path, output_dir=out, **overrides)
    try:
        job.validate()  # settings that do not fit together, named, before any model loads
    except ValueError as error:
        fail(f"{error} (preset {config}, --set to change)")
    with input_errors_as_one_line():
        final = run_rl(job)
    console.print(f"RL model: {final}")


@app.command()
def pretrain(
    out: str = typer.Option("checkpoints/base-tiny", help="Checkpoint folder; reruns resume."),
    steps: int = typer.Option(4000, help="Optimizer steps in all."),
    threads: int = typer.Option(1, help="Torch threads."),
    family: str = typer.Option("qwen2.5-vl", help="The family of a new model: qwen2.5-vl, qwen3-vl or qwen3.5."),
) -> None:
    """Pre-train the demo's tiny base model to see the synthetic grid world (crops, colours)."""
    from mini_o3.demo.pretrain import main as pretrain_main

    pretrain_main(["--out", out, "--steps", str(steps), "--threads", str(threads), "--family", family])


@app.command()
def serve(
    model_path: Path = typer.Option(..., help="A local checkpoint directory to serve (Qwen2.5-VL, Qwen3-VL or Qwen3.5)."),
    max_pixels: Optional[int] = typer.Option(None, help="The processor shrinks every image to at most this many pixels [default: the checkpoint's view pixels, else its processor's]."),
    min_pixels: Optional[int] = typer.Option(None, help="The processor grows every image to at least this many pixels [default: as --max-pixels]."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: str = typer.Option("mini-o3", help="The model name the server serves (other names get 404, as from vLLM)."),
    api_key_env: Optional[str] = typer.Option(None, help="Require the key in this environment variable from clients (it must be set)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without a key on an address other than loopback."),
    max_model_len: Optional[int] = typer.Option(None, help="Refuse (400) requests whose prompt plus max_tokens exceed this many tokens, as vLLM does."),
) -> None:
    """Serve a local checkpoint as an OpenAI-compatible chat-completions server."""
    from mini_o3.serve import serve_forever, server_api_key

    try:
        api_key = server_api_key(api_key_env, no_auth, host)
    except ValueError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(2)
    from mini_o3.policies.local import LocalPolicy

    from mini_o3.models.episode_settings import read_episode_settings

    # Clients size the images they send; the server holds them to the pixels the model was
    # trained on, so that a client unaware of the checkpoint's settings still gets sane answers.
    with input_errors_as_one_line(ValueError):
        stored = read_episode_settings(model_path)
        if stored is not None:
            max_pixels = max_pixels or stored.view_max_pixels
            min_pixels = min_pixels or min(stored.view_min_pixels, max_pixels)
            console.print(f"serving with the processor held to {min_pixels:,}..{max_pixels:,} pixels (from {model_path}/mini_o3_episode.json unless flagged)")
        policy = LocalPolicy(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
    serve_forever(policy, host=host, port=port, model=name, api_key=api_key, max_model_len=max_model_len)


@app.command()
def tiny(
    out: Path = typer.Argument(..., help="Where to write the checkpoint."),
    seed: int = typer.Option(0, help="Weight seed."),
    size: str = typer.Option("tiny", help="tiny (about 1.5M parameters) or small."),
    family: str = typer.Option("qwen2.5-vl", help="The model family: qwen2.5-vl, qwen3-vl or qwen3.5."),
) -> None:
    """Build a tiny random checkpoint of a supported family (model, tokenizer, processor) offline."""
    from mini_o3.models.families import backbones
    from mini_o3.models.tiny import build_tiny

    if family not in backbones():
        raise typer.BadParameter(f"--family must be one of {', '.join(backbones())}")
    path = build_tiny(out, seed=seed, size=size, family=family)
    console.print(f"wrote a tiny {family} checkpoint to {path}")


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, help="Where the demo writes everything (default runs/demo-<preset>-s<seed>); reruns resume."),
    seed: int = typer.Option(0, help="Seed of the whole run: another seed makes another run."),
    preset: str = typer.Option("default", help="default (about 15 minutes on 2 cores), long (more data and steps, with the masking ablation) or smoke (every stage in a few minutes; proves the pipeline, not learning)."),
    no_overturn_mask: bool = typer.Option(False, "--no-overturn-mask", help="Train RL without over-turn masking."),
    ablation: Optional[bool] = typer.Option(None, "--ablation/--no-ablation", help="Train RL with masking on and off (--ablation-repeats runs each way, from one SFT model) and compare (default: the preset's; long and smoke do)."),
    ablation_repeats: Optional[int] = typer.Option(None, help="RL runs each way in the ablation (default 2; seeds seed, seed+1, ...)."),
    rl_steps: Optional[int] = typer.Option(None, help="RL steps (default: the preset's)."),
    rl_learning_rate: Optional[float] = typer.Option(None, help="RL learning rate (default: the preset's)."),
    rl_max_turns: Optional[int] = typer.Option(None, help="Turn limit in RL training (default: the preset's)."),
    train_void: bool = typer.Option(False, "--train-void", help="Train void rollouts with reward 0, as the release's launch does (the demo masks them: docs/results.md)."),
    sft_steps: Optional[int] = typer.Option(None, help="SFT optimizer steps (default: the preset's); fewer make an imperfect cold start."),
    sft_from: Optional[Path] = typer.Option(None, help="Reuse the data, cold start and SFT model of this finished demo run (same settings) and run only RL and evaluation: RL sweeps from one SFT model."),
    base: Optional[Path] = typer.Option(None, help="Start from this checkpoint instead of checkpoints/base-tiny, of any family (e.g. `mini-o3 pretrain --family qwen3-vl --out DIR`)."),
) -> None:
    """The whole recipe offline on a tiny model: data, cold start, SFT, RL, evaluation, report."""
    from mini_o3.demo.pipeline import demo_config, run_demo

    tags = [
        f"-sft{sft_steps}" if sft_steps is not None else "",
        f"-rl{rl_steps}" if rl_steps is not None else "",
        f"-lr{rl_learning_rate:g}" if rl_learning_rate is not None else "",
        f"-turns{rl_max_turns}" if rl_max_turns is not None else "",
        "-trainvoid" if train_void else "",
    ]
    name = f"demo-{preset}-s{seed}{'-ablation' if ablation else '-no-ablation' if ablation is False else ''}{'-nomask' if no_overturn_mask else ''}{''.join(tags)}"
    folder = out or Path("runs") / name
    overrides: dict[str, object] = {"out": str(folder), "seed": seed, "overturn_mask": not no_overturn_mask}
    optional = {
        "ablation": ablation, "ablation_repeats": ablation_repeats, "rl_steps": rl_steps, "rl_learning_rate": rl_learning_rate,
        "sft_steps": sft_steps, "rl_max_turns": rl_max_turns,
    }
    if train_void:
        overrides["rl_ignore_void"] = False
    overrides.update({key: value for key, value in optional.items() if value is not None})
    if sft_from is not None:
        overrides["sft_from"] = str(sft_from)
    if base is not None:
        overrides["base"] = str(base)
    try:
        config = demo_config(preset, **overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error))
    run_demo(config)


export_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Write datasets in other trainers' formats.")
app.add_typer(export_app, name="export")


@export_app.command("verl")
def export_verl(
    data: str = typer.Argument(..., help="Dataset spec, e.g. visualprobe:train.json or synthetic:DIR."),
    out: Path = typer.Argument(..., help="The parquet file to write (verl's data.train_files / val_files)."),
    max_turns: Optional[int] = typer.Option(None, help="Per-row turn limit over the loop's (validation uses 12)."),
    max_images: Optional[int] = typer.Option(None, help="Per-row image limit over the loop's."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    skip_bad: bool = typer.Option(False, help="Skip and count bad records."),
) -> None:
    """Write a dataset as verl parquet rows for the mini_o3 agent loop (docs/verl.md)."""
    from mini_o3.data.loading import load_dataset
    from mini_o3.train.verl.rows import export_rows, write_parquet

    overrides = {key: value for key, value in (("max_turns", max_turns), ("max_images", max_images)) if value is not None}
    try:
        loaded = load_dataset(data, skip_bad=skip_bad, limit=limit)
        rows = export_rows(loaded.samples, out.with_suffix("").with_name(out.stem + "-images"), overrides)
    except (OSError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(2)
    write_parquet(rows, out)
    console.print(f"{loaded.summary()} -> {len(rows)} rows in {out}")


def main() -> None:
    """Entry point for `python -m mini_o3`."""
    app()


if __name__ == "__main__":
    main()
