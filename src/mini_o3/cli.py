"""The `mini-o3` command line: one command per job."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from mini_o3.agent.loop import EpisodeConfig, run_episode
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import INFERENCE_LIMITS, ZoomEnv
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ImageLoadError, open_image
from mini_o3.agent.policy import Policy, SamplingParams
from mini_o3.agent.trajectory import TurnRecord

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Vision-language agents that search high-resolution images by zooming.")
console = Console()


def build_policy(api: Optional[str], model: Optional[str], model_path: Optional[Path], api_key_env: str = "OPENAI_API_KEY") -> Policy:
    """An HTTP policy for `--api URL[,URL...] --model NAME`, or a local one for `--model-path DIR`."""
    if (api is None) == (model_path is None):
        raise typer.BadParameter("give either --api URL --model NAME (a server) or --model-path DIR (a local checkpoint)")
    if api is not None:
        if not model:
            raise typer.BadParameter("--api needs --model NAME (the model name the server serves)")
        from mini_o3.policies.http import HttpPolicy

        return HttpPolicy([url.strip() for url in api.split(",") if url.strip()], model=model, api_key_env=api_key_env)
    from mini_o3.policies.local import LocalPolicy

    return LocalPolicy(model_path)


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
    model_path: Optional[Path] = typer.Option(None, help="A local Qwen2.5-VL-class checkpoint directory."),
    max_turns: int = typer.Option(INFERENCE_LIMITS.max_turns, help="Assistant turns at most."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (the paper evaluates at 1.0)."),
    max_new_tokens: int = typer.Option(8192, help="Tokens per turn at most."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    numbering: str = typer.Option("reference", help="Observation labels: reference (as the checkpoint was trained) or consistent."),
    out: Optional[Path] = typer.Option(None, help="Where to write the trajectory, the crops and boxes.png."),
    image_pixel_limit: int = typer.Option(DEFAULT_IMAGE_PIXEL_LIMIT, help="Refuse images with more pixels than this."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    max_context: int = typer.Option(INFERENCE_LIMITS.max_context_tokens, help="The model's context window in tokens: the server's --max-model-len when lower than the paper's 32,768."),
) -> None:
    """Answer QUESTION about IMAGE by zooming, printing every turn."""
    from mini_o3.eval.draw import draw_zoom_boxes
    from mini_o3.agent.store import TrajectoryStore

    if numbering not in ("reference", "consistent"):
        raise typer.BadParameter("--numbering must be 'reference' or 'consistent'")
    check_context(max_context)
    try:
        original = open_image(image, image_pixel_limit)
    except ImageLoadError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    policy = build_policy(api, model, model_path, api_key_env)
    config = EpisodeConfig(
        limits=replace(INFERENCE_LIMITS, max_turns=max_turns, numbering=numbering, max_context_tokens=max_context),
        sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed),
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
    model_path: Optional[Path] = typer.Option(None, help="A local Qwen2.5-VL-class checkpoint directory."),
    samples: int = typer.Option(1, help="K sampled runs per question (Avg@K)."),
    max_turns: Optional[int] = typer.Option(None, help="Assistant turns at most (default 32; 1 with --prompt direct); every smaller budget is read off the same run."),
    concurrency: int = typer.Option(32, help="Episodes in flight."),
    out: Path = typer.Option(Path("runs/eval"), help="Run directory; the same command again resumes it."),
    prompt: str = typer.Option("zoom", help="zoom: the released prompt with its zoom tool; direct: the no-zoom baseline (that prompt without the zoom sentence, one turn)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (the paper evaluates at 1.0)."),
    max_new_tokens: int = typer.Option(8192, help="Tokens per turn at most."),
    seed: int = typer.Option(0, help="Base seed of the per-turn sampling seeds."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    skip_bad: bool = typer.Option(False, help="Skip and count bad records instead of stopping."),
    retry_errors: bool = typer.Option(False, help="Run again the episodes recorded as errors."),
    max_pixels: int = typer.Option(2_000_000, help="Images are shown at most this many pixels."),
    min_pixels: int = typer.Option(40_000, help="Images are shown at least this many pixels."),
    numbering: str = typer.Option("reference", help="Observation labels: reference or consistent."),
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
    try:
        config = EvalConfig(
            data=data, out=out, samples=samples, max_turns=max_turns or (1 if prompt == "direct" else 32), prompt=prompt,
            concurrency=concurrency, temperature=temperature,
            max_new_tokens=max_new_tokens, seed=seed, limit=limit, skip_bad=skip_bad, retry_errors=retry_errors,
            max_pixels=max_pixels, min_pixels=min_pixels, numbering=numbering, judge=judge, judge_mode=judge_mode,
            max_context_tokens=max_context,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    from mini_o3.data.benchmarks.common import DatasetError
    from mini_o3.eval.run_dir import RunDirError

    policy = build_policy(api, model, model_path, api_key_env)
    try:
        result = run_eval(config, policy, console=console)
    except (RunDirError, DatasetError) as error:  # a user's folder or file: one line, no traceback
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"report: {result.run_dir / 'index.html'}")


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
    model_path: Optional[str] = typer.Option(None, help="local: a Qwen2.5-VL-class checkpoint directory."),
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
    max_context: int = typer.Option(INFERENCE_LIMITS.max_context_tokens, help="The model's context window in tokens: the server's --max-model-len when lower than the paper's 32,768."),
) -> None:
    """Collect cold-start trajectories: keep only correct, well-formed, balanced, unique ones."""
    from mini_o3.coldstart.collect import CollectConfig, CollectDirError
    from mini_o3.coldstart.collect import collect as run_collect

    if policy not in ("api", "local", "oracle"):
        raise typer.BadParameter("--policy must be api, local or oracle")
    check_context(max_context)
    config = CollectConfig(
        data=data, policy=policy, api=api, model=model, model_path=model_path, exemplars=exemplars,
        exemplars_per_prompt=exemplars_per_prompt, per_question=per_question, rounds=rounds, max_turns=max_turns,
        temperature=temperature, add_accepted_to_exemplars=add_accepted_to_exemplars, concurrency=concurrency,
        seed=seed, limit=limit, skip_bad=skip_bad, out=out, max_context_tokens=max_context,
    )
    print_config("collect", config.to_dict())
    try:
        report = run_collect(config)
    except CollectDirError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(2)
    console.print(report.summary())


def _job_overrides(pairs: list[str]) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--set takes FIELD=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


@app.command()
def sft(
    data: str = typer.Option(..., help="SFT dataset folder (as `mini-o3 collect` writes: OUT/sft)."),
    model_path: str = typer.Option(..., help="Starting checkpoint (Qwen2.5-VL-class folder or a tiny one)."),
    out: str = typer.Option(..., help="Output folder: checkpoints, log.jsonl, learning_curve.png, final/; reruns resume."),
    config: str = typer.Option("tiny-cpu", help="Preset name (tiny-cpu, qwen2.5-vl-7b) or a YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the SFT config: --set learning_rate=1e-5 (repeatable)."),
) -> None:
    """Supervised fine-tuning on cold-start trajectories, loss on assistant tokens only."""
    from mini_o3.train import load_preset, run_sft, with_overrides

    job = with_overrides(load_preset(config).sft, data=data, model_path=model_path, output_dir=out, **_job_overrides(set_))
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
    job = with_overrides(load_preset(config).rl, data=data, model_path=model_path, output_dir=out, **overrides)
    final = run_rl(job)
    console.print(f"RL model: {final}")


@app.command()
def pretrain(
    out: str = typer.Option("checkpoints/base-tiny", help="Checkpoint folder; reruns resume."),
    steps: int = typer.Option(4000, help="Optimizer steps in all."),
    threads: int = typer.Option(1, help="Torch threads."),
) -> None:
    """Pre-train the demo's tiny base model to see the synthetic grid world (crops, colours)."""
    from mini_o3.demo.pretrain import main as pretrain_main

    pretrain_main(["--out", out, "--steps", str(steps), "--threads", str(threads)])


@app.command()
def serve(
    model_path: Path = typer.Option(..., help="A local Qwen2.5-VL-class checkpoint directory to serve."),
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

    serve_forever(LocalPolicy(model_path), host=host, port=port, model=name, api_key=api_key, max_model_len=max_model_len)


@app.command()
def tiny(
    out: Path = typer.Argument(..., help="Where to write the checkpoint."),
    seed: int = typer.Option(0, help="Weight seed."),
    size: str = typer.Option("tiny", help="tiny (about 1.5M parameters) or small."),
) -> None:
    """Build a tiny random Qwen2.5-VL checkpoint (model, tokenizer, processor) offline."""
    from mini_o3.models.tiny import build_tiny

    path = build_tiny(out, seed=seed, size=size)
    console.print(f"wrote a tiny Qwen2.5-VL checkpoint to {path}")


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
    sft_from: Optional[Path] = typer.Option(None, help="Reuse the data, cold start and SFT model of this finished demo run (same settings) and run only RL and evaluation: RL sweeps from one SFT model."),
) -> None:
    """The whole recipe offline on a tiny model: data, cold start, SFT, RL, evaluation, report."""
    from mini_o3.demo.pipeline import demo_config, run_demo

    tags = [f"-rl{rl_steps}" if rl_steps is not None else "", f"-lr{rl_learning_rate:g}" if rl_learning_rate is not None else ""]
    name = f"demo-{preset}-s{seed}{'-ablation' if ablation else '-no-ablation' if ablation is False else ''}{'-nomask' if no_overturn_mask else ''}{''.join(tags)}"
    folder = out or Path("runs") / name
    overrides: dict[str, object] = {"out": str(folder), "seed": seed, "overturn_mask": not no_overturn_mask}
    optional = {"ablation": ablation, "ablation_repeats": ablation_repeats, "rl_steps": rl_steps, "rl_learning_rate": rl_learning_rate}
    overrides.update({key: value for key, value in optional.items() if value is not None})
    if sft_from is not None:
        overrides["sft_from"] = str(sft_from)
    try:
        config = demo_config(preset, **overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error))
    run_demo(config)


def main() -> None:
    """Entry point for `python -m mini_o3`."""
    app()


if __name__ == "__main__":
    main()
