"""Cold-start collection: run a policy on questions, keep the correct well-formed trajectories, write SFT data.

The paper's recipe (shared/reference/mini-o3.md section 7), iterated in rounds:

1. Each round runs `attempts_per_round` episodes of every question that still has fewer than
   `per_question` accepted trajectories, with `mini_o3.agent.loop.run_episodes`.
2. An API or local model is prompted in context with `exemplars_per_prompt` multi-turn
   exemplars (`mini_o3.coldstart.exemplars.ExemplarPolicy`: earlier turns of the same chat, after the
   system prompt, with their images); the oracle needs none. The environment never sees them:
   the saved trajectory is the plain protocol conversation, what SFT trains on.
3. Every episode is streamed to `OUT/rounds/round_NNN/trajectories.jsonl` as it finishes
   (`TrajectoryStore`); a rerun skips the (sample, run) keys already there, so a killed job
   resumes without redoing anything, except episodes that ended in `error` (a server that
   was down, say): those run again, and the last line of a key wins. The run number of an
   episode is round * attempts_per_round + attempt, so rounds never share keys. A rerun must
   use the settings that made the folder (`RESUME_FIELDS`); other settings are refused.
4. Acceptance (`select_trajectories`, a pure function of everything stored, in key order):
   rejected, and counted by reason, are episodes that failed (`error`), that hold a
   malformed action, an error turn, a turn without `<think>...</think>` or a turn cut by the
   token limit (`format_error`), that ended without an answer (`no_answer`, `over_turn`,
   `over_context`), whose answer scores wrong (`wrong`, `mini_o3.eval.scoring.score_answer`),
   that repeat an accepted trajectory's action sequence for the same question
   (`duplicate`), that come after the question already has `per_question` (`over_cap`),
   and one-turn trajectories beyond `max_one_turn_share` of the dataset's target size
   (questions x per_question) (`one_turn_cap`): a model that answers at once would
   otherwise teach SFT to skip the search.
5. With `add_accepted_to_exemplars`, after each round up to `exemplars_added_per_round`
   accepted trajectories (most turns and patterns first) join the exemplar pool of later
   rounds; an exemplar is never shown for its own question.
6. At the end: `OUT/accepted.jsonl` (trajectories), `OUT/sft/` (mini_o3.coldstart.sft_files: chat
   messages + images, and the Mini-o3 cold-start parquet), `OUT/stats.json` (acceptance per
   round, rejections by reason, turns histogram, pattern mix) and `OUT/config.json`.

Patterns are read off each trajectory by `mini_o3.coldstart.exemplars.classify_patterns`; the oracle's own
plan pattern is saved as meta.oracle_pattern.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from mini_o3.agent import protocol
from mini_o3.agent.loop import Episode, EpisodeConfig, run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ResizePolicy
from mini_o3.coldstart.exemplars import Exemplar, ExemplarPolicy, classify_patterns, format_problems, load_exemplars
from mini_o3.jsonl import remove_stale_temporaries, repair_tail, write_json
from mini_o3.agent.policy import Policy
from mini_o3.coldstart.oracle import OraclePolicy, PatternMix
from mini_o3.policies.seeded import SeededPolicy
from mini_o3.eval.scoring import score_answer
from mini_o3.coldstart.sft_files import SftExample, SftFiles, trajectory_images, write_sft_dataset
from mini_o3.agent.store import TrajectoryStore
from mini_o3.agent.trajectory import Status, Trajectory, write_jsonl

POLICY_KINDS = ("api", "local", "oracle")
REJECTION_REASONS = (
    "error", "format_error", "no_answer", "over_turn", "over_context", "wrong", "duplicate", "over_cap", "one_turn_cap",
)
CONFIG_FILE = "config.json"

# CollectConfig fields that change what an episode does, how runs are numbered, or which
# exemplars a prompt shows: an output folder made with other values cannot be resumed with
# these, since its stored episodes would mean something else. Rounds, limits, the filters
# (a pure function of what is stored), the server URLs and the concurrency may change.
RESUME_FIELDS = (
    "data", "policy", "model", "model_path", "exemplars", "exemplars_per_prompt", "per_question", "attempts_per_round",
    "max_turns", "max_images", "max_context_tokens", "numbering", "temperature", "max_new_tokens", "max_pixels",
    "min_pixels", "pixel_limit", "seed", "add_accepted_to_exemplars", "exemplars_added_per_round", "oracle_mix",
    "oracle_grid_wording",
)


@dataclass
class CollectConfig:
    """One cold-start collection: which questions, which policy, how many trajectories, where to write."""

    data: str | None = None
    """Dataset spec for `mini_o3.data.loading.load_dataset` (e.g. "synthetic:runs/synth"); or pass samples to collect()."""
    policy: str = "oracle"
    """api (an OpenAI-compatible server), local (a transformers checkpoint) or oracle (ground-truth boxes)."""
    api: str | None = None
    """api: server URL(s), comma-separated."""
    model: str | None = None
    """api: the model name the server serves."""
    model_path: str | None = None
    """local: a Qwen2.5-VL-class checkpoint directory."""
    api_key_env: str = "OPENAI_API_KEY"
    """api: the environment variable holding the API key."""
    timeout_s: float | None = None
    """api: seconds to wait for each reply before retrying; None for the HTTP client's default (120)."""
    max_retries: int | None = None
    """api: retries of a failed request before the episode ends as an error; None for the HTTP client's default (5)."""
    exemplars: str | None = None
    """Folder of exemplar JSON files; None for the built-in ones (mini_o3/assets/exemplars)."""
    exemplars_per_prompt: int = 2
    """api/local: exemplars shown before each question (0 for none)."""
    per_question: int = 1
    """Accepted trajectories wanted per question (the cap)."""
    attempts_per_round: int | None = None
    """Episodes per lacking question per round; None for per_question."""
    rounds: int = 1
    """Rounds; each retries the questions still lacking trajectories."""
    max_turns: int = 16
    """Assistant turns per episode at most (the oracle plans within it too)."""
    max_images: int | None = None
    """Images in the context at most (None: no limit besides the turns)."""
    max_context_tokens: int = 32_768
    """The model's context window."""
    numbering: str = "reference"
    """Observation labels: "reference" (as the released checkpoint) or "consistent"."""
    temperature: float = 1.0
    """Sampling temperature of the api/local policy."""
    max_new_tokens: int = 2048
    """Tokens per turn at most."""
    max_pixels: int = 2_000_000
    """Images shown to the model are scaled down to at most this many pixels."""
    min_pixels: int = 40_000
    """... and up to at least this many."""
    pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT
    """Refuse originals larger than this many pixels."""
    max_one_turn_share: float = 0.1
    """At most this share of the dataset's target size (questions x per_question) may be one-turn trajectories."""
    require_think: bool = True
    """Reject trajectories with a turn that has no <think>...</think>."""
    out: str = "runs/collect"
    """Output folder; running again with the same folder resumes."""
    concurrency: int = 8
    """Episodes in flight at once."""
    seed: int = 0
    """Seeds the oracle's plans, the exemplar choice and every api/local turn's sampling."""
    add_accepted_to_exemplars: bool = False
    """After each round, add accepted trajectories to the exemplar pool of later rounds."""
    exemplars_added_per_round: int = 2
    """How many accepted trajectories join the pool per round."""
    oracle_grid_wording: str = "natural"
    """oracle, grid world: "natural" (varied sentences) or "terse" (the demo base model's fixed phrases)."""
    oracle_mix: PatternMix = field(default_factory=PatternMix)
    """oracle: how often each pattern is used and how long searches get."""
    limit: int | None = None
    """Collect on the first N questions only (None for all)."""
    skip_bad: bool = False
    """Skip bad data records instead of stopping at the first one."""
    image_format: str = "JPEG"
    """Format of the SFT dataset's images (JPEG or PNG)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if isinstance(self.oracle_mix, dict):
            self.oracle_mix = PatternMix(**self.oracle_mix)
        if self.policy not in POLICY_KINDS:
            raise ValueError(f"policy must be one of {', '.join(POLICY_KINDS)}, got {self.policy!r}")
        for name in ("per_question", "rounds", "max_turns", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.attempts_per_round is not None and self.attempts_per_round < 1:
            raise ValueError(f"attempts_per_round must be None or at least 1, got {self.attempts_per_round}")
        if self.exemplars_per_prompt < 0 or self.exemplars_added_per_round < 0:
            raise ValueError("exemplars_per_prompt and exemplars_added_per_round must be >= 0")
        if not 0 <= self.max_one_turn_share <= 1:
            raise ValueError(f"max_one_turn_share must be between 0 and 1, got {self.max_one_turn_share}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.numbering not in ("reference", "consistent"):
            raise ValueError(f"numbering must be 'reference' or 'consistent', got {self.numbering!r}")
        if self.image_format.upper() not in ("JPEG", "JPG", "PNG"):
            raise ValueError(f"image_format must be JPEG or PNG, got {self.image_format!r}")
        self.episode_config()  # Limits and ResizePolicy validate their fields now, before any work

    @property
    def attempts(self) -> int:
        """Episodes per lacking question per round."""
        return self.attempts_per_round or self.per_question

    def resize(self) -> ResizePolicy:
        """The resize policy of every image shown."""
        return ResizePolicy(max_pixels=self.max_pixels, min_pixels=self.min_pixels)

    def episode_config(self) -> EpisodeConfig:
        """The agent's EpisodeConfig for every episode of the collection."""
        return EpisodeConfig.from_settings(
            self.max_turns, self.max_images, self.max_context_tokens, numbering=self.numbering,
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, max_pixels=self.max_pixels,
            min_pixels=self.min_pixels, pixel_limit=self.pixel_limit,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "CollectConfig":
        """Rebuild a config written by `to_dict` (unknown keys are ignored)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


class CollectDirError(ValueError):
    """An output folder that cannot be resumed: made with other settings, or holding an unreadable config.json."""


@dataclass
class CollectReport:
    """What `collect` did and what the output folder now holds."""

    out: Path
    stats: dict[str, Any]
    """stats.json: acceptance per round, rejections, turns histogram, pattern mix."""
    accepted: int
    """Trajectories in the SFT dataset."""
    episodes: int
    """Episodes stored over all rounds."""
    ran: int
    """Episodes this call ran."""
    resumed: int
    """Episodes found on disk and not run again."""
    sft: SftFiles | None = None
    """The SFT dataset files (None when the call was stopped before the end)."""
    stopped: bool = False
    """True when `stop` ended the call early; run again to finish."""

    def summary(self) -> str:
        """A few lines for the end of a run: what was kept, why the rest was not, where it went."""
        stats = self.stats
        lines = [
            f"{self.accepted} trajectories kept from {self.episodes} episodes ({self.ran} run now, {self.resumed} resumed)"
            f" for {stats['questions_with_trajectories']}/{stats['questions']} questions",
        ]
        for entry in stats["rounds"]:
            rate = "-" if entry["acceptance_rate"] is None else f"{100 * entry['acceptance_rate']:.1f}%"
            lines.append(f"  round {entry['round']}: {entry['episodes']} episodes, {entry['accepted']} accepted ({rate}), rejected {entry['rejected']}")
        lines.append(f"  turns {stats['turns_histogram']}  patterns {stats['patterns']}")
        if self.stopped:
            lines.append("  stopped early: run the same command again to finish")
        elif self.sft is not None:
            lines.append(f"  SFT data: {self.sft.messages} and {len(self.sft.parquet)} parquet file(s) in {self.sft.directory / 'coldstart'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "out": str(self.out),
            "accepted": self.accepted,
            "episodes": self.episodes,
            "ran": self.ran,
            "resumed": self.resumed,
            "stopped": self.stopped,
            "sft": self.sft.to_dict() if self.sft else None,
            "stats": self.stats,
        }


# ---------------------------------------------------------------- judging trajectories


def action_signature(trajectory: Trajectory) -> tuple[Any, ...]:
    """The sequence of actions (source and box of each zoom, the normalised answer): equal means duplicate."""
    signature: list[Any] = []
    for turn in trajectory.turns:
        action = protocol.parse_action(turn.text)
        if isinstance(action, protocol.Zoom):
            signature.append(("zoom", action.source, tuple(round(value, 3) for value in action.bbox)))
        elif isinstance(action, protocol.Answer):
            signature.append(("answer", " ".join(action.text.lower().split())))
        else:
            signature.append((type(action).__name__,))
    return tuple(signature)


def episode_verdict(trajectory: Trajectory, require_think: bool = True) -> str:
    """"candidate" for a correct well-formed episode, else the reason it is rejected on its own."""
    if trajectory.status is Status.ERROR:
        return "error"
    if format_problems(trajectory, require_think):
        return "format_error"
    if trajectory.status is not Status.ANSWERED:
        return trajectory.status.value
    if not score_answer(trajectory.answer, trajectory.ground_truth, trajectory.options or None).correct:
        return "wrong"
    return "candidate"


@dataclass
class Selection:
    """The accepted trajectories and why every other one was rejected."""

    accepted: list[Trajectory]
    verdicts: dict[tuple[str, int], str]
    """(sample id, run) -> accepted or a rejection reason."""


def select_trajectories(
    trajectories: Iterable[Trajectory],
    per_question: int,
    one_turn_limit: int,
    require_think: bool = True,
) -> Selection:
    """Accept, in (round, sample id, run) order, the trajectories that pass every filter (see the module docstring)."""
    ordered = sorted(trajectories, key=lambda t: (int(t.meta.get("round", 0)), t.sample_id, int(t.meta.get("run", 0))))
    accepted: list[Trajectory] = []
    verdicts: dict[tuple[str, int], str] = {}
    signatures: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    one_turn = 0
    for trajectory in ordered:
        key = (trajectory.sample_id, int(trajectory.meta.get("run", 0)))
        verdict = episode_verdict(trajectory, require_think)
        if verdict == "candidate":
            signature = action_signature(trajectory)
            if signature in signatures[trajectory.sample_id]:
                verdict = "duplicate"
            elif len(signatures[trajectory.sample_id]) >= per_question:
                verdict = "over_cap"
            elif trajectory.num_turns == 1 and one_turn >= one_turn_limit:
                verdict = "one_turn_cap"
            else:
                verdict = "accepted"
                signatures[trajectory.sample_id].add(signature)
                one_turn += trajectory.num_turns == 1
                accepted.append(trajectory)
        verdicts[key] = verdict
    return Selection(accepted, verdicts)


# ---------------------------------------------------------------- the collection


def build_collect_policy(config: CollectConfig) -> Policy:
    """The policy a config names: an HTTP client, a local model, or the oracle."""
    if config.policy == "oracle":
        return OraclePolicy(
            config.oracle_mix, seed=config.seed, max_turns=config.max_turns, resize=config.resize(),
            grid_wording=config.oracle_grid_wording,
        )
    if config.policy == "api":
        if not config.api or not config.model:
            raise ValueError("policy 'api' needs api (server URL, comma-separated for several) and model (the served model name)")
        from mini_o3.policies.http import HttpPolicy

        given = {"timeout_s": config.timeout_s, "max_retries": config.max_retries}
        return HttpPolicy(
            [url.strip() for url in config.api.split(",") if url.strip()], model=config.model, api_key_env=config.api_key_env,
            **{name: value for name, value in given.items() if value is not None},
        )
    if not config.model_path:
        raise ValueError("policy 'local' needs model_path (a Qwen2.5-VL-class checkpoint directory)")
    from mini_o3.policies.local import LocalPolicy

    return LocalPolicy(config.model_path)


def load_samples(config: CollectConfig) -> list[Sample]:
    """The questions a config names, limited to `config.limit`."""
    if not config.data:
        raise ValueError("no questions: set data (a dataset spec) or pass samples to collect()")
    from mini_o3.data.loading import load_dataset

    return list(load_dataset(config.data, skip_bad=config.skip_bad, limit=config.limit, pixel_limit=config.pixel_limit).samples)


def round_dir(out: str | Path, number: int) -> Path:
    """Where round `number` stores its episodes."""
    return Path(out) / "rounds" / f"round_{number:03d}"


def collect(
    config: CollectConfig,
    policy: Policy | None = None,
    samples: Sequence[Sample] | None = None,
    stop: threading.Event | None = None,
    console: Any = None,
) -> CollectReport:
    """Run the collection (or resume it), then write the SFT dataset and the statistics."""
    from rich.console import Console

    console = console or Console(stderr=True, quiet=not config.progress)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(out, config)
    remove_stale_temporaries(out)  # a run killed mid-write leaves them; the SFT folder's go in write_sft_dataset
    write_json(out / CONFIG_FILE, config.to_dict(), indent=1)
    items = load_samples(config) if samples is None else list(samples)[: config.limit]
    _check_ids(items)
    by_id = {sample.id: sample for sample in items}
    policy = policy if policy is not None else build_collect_policy(config)
    episode = config.episode_config()
    is_oracle = isinstance(policy, OraclePolicy)
    base_pool = [] if is_oracle or config.exemplars_per_prompt == 0 else load_exemplars(config.exemplars)
    one_turn_limit = math.floor(config.max_one_turn_share * len(items) * config.per_question)
    stored: list[Trajectory] = []
    pool_log: list[dict[str, Any]] = []
    added: list[Exemplar] = []
    ran = resumed = 0
    stopped = False
    for number in range(config.rounds):
        store = TrajectoryStore(round_dir(out, number), save_views=False)
        repair_tail(store.path)
        previous = select_trajectories(stored, config.per_question, one_turn_limit, config.require_think)
        if config.add_accepted_to_exemplars and number > 0:
            added += _pick_exemplars(previous.accepted, added, by_id, config.exemplars_added_per_round, number - 1)
        counts = Counter(trajectory.sample_id for trajectory in previous.accepted)
        lacking = [sample for sample in items if counts[sample.id] < config.per_question]
        # The last line of a key wins (an error episode run again); questions beyond `limit` stay out.
        round_stored = {_key(t): t for t in store.load() if t.sample_id in by_id}
        finished = {key for key, trajectory in round_stored.items() if trajectory.status is not Status.ERROR}
        runs = range(number * config.attempts, (number + 1) * config.attempts)
        jobs = [(sample, run) for sample in lacking for run in runs if (sample.id, run) not in finished]
        resumed += sum(1 for sample in lacking for run in runs if (sample.id, run) in finished)
        pool = base_pool + added
        pool_log.append({"round": number, "exemplars": [exemplar.id for exemplar in pool], "questions": len(lacking)})
        if is_oracle:
            wrapped: Policy = policy
        else:  # seeds outside the exemplars, so that their assistant turns do not count as turns
            wrapped = SeededPolicy(ExemplarPolicy(policy, pool, config.exemplars_per_prompt, config.seed, episode), config.seed)
        fresh = _run_round(wrapped, jobs, episode, config, store, number, policy if is_oracle else None, by_id, stop, console)
        ran += len(fresh)
        round_stored.update((_key(t), t) for t in fresh)
        stored += round_stored.values()
        if stop is not None and stop.is_set():
            stopped = True
            break
    selection = select_trajectories(stored, config.per_question, one_turn_limit, config.require_think)
    stats = collection_stats(stored, selection, items, config, pool_log)
    write_jsonl(out / "accepted.jsonl", selection.accepted, append=False)
    sft = None
    if not stopped:
        index_of = {sample.id: index for index, sample in enumerate(items)}
        examples = (
            SftExample(
                trajectory,
                trajectory_images(trajectory, by_id[trajectory.sample_id].image, episode.resize),
                sample_index=index_of[trajectory.sample_id],
                rollout_index=int(trajectory.meta.get("run", 0)),
                data_source=by_id[trajectory.sample_id].source or "mini_o3",
            )
            for trajectory in selection.accepted
        )
        sft = write_sft_dataset(examples, out / "sft", image_format=config.image_format)
        _write_episode_settings(out / "sft", config)
        stats["sft"] = sft.to_dict()
    write_json(out / "exemplar_pool.json", pool_log, indent=1)
    write_json(out / "stats.json", stats, indent=1)
    return CollectReport(out, stats, len(selection.accepted), len(stored), ran, resumed, sft, stopped)


def check_resumable(out: str | Path, config: CollectConfig) -> None:
    """Raise CollectDirError when `out` holds a collection made with other `RESUME_FIELDS` than `config`'s."""
    path = Path(out) / CONFIG_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as error:
        raise CollectDirError(f"cannot read {path} ({error}); fix or delete it, or use another --out") from error
    # Through JSON, so that tuples and lists (PatternMix) compare as they were saved.
    current = json.loads(json.dumps(config.to_dict(), default=str))
    different = [
        f"{name}: {saved[name]!r} there, {current[name]!r} now" for name in RESUME_FIELDS if name in saved and saved[name] != current[name]
    ]
    if different:
        raise CollectDirError(
            f"{out} holds a collection made with other settings ({'; '.join(different)}); "
            "run again with the same settings to resume it, or use another --out"
        )


def _key(trajectory: Trajectory) -> tuple[str, int]:
    return trajectory.sample_id, int(trajectory.meta.get("run", 0))


def _check_ids(samples: Sequence[Sample]) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"two questions share the id {sample.id!r}; ids must be unique to resume and to cap per question")
        seen.add(sample.id)


def _run_round(
    policy: Policy,
    jobs: list[tuple[Sample, int]],
    episode: EpisodeConfig,
    config: CollectConfig,
    store: TrajectoryStore,
    number: int,
    oracle: OraclePolicy | None,
    by_id: dict[str, Sample],
    stop: threading.Event | None,
    console: Any,
) -> list[Trajectory]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    fresh: list[Trajectory] = []
    if not jobs:
        return fresh
    tagged = iter(jobs)
    accepted = 0
    columns = (
        TextColumn(f"collect round {number}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("accepted {task.fields[accepted]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not config.progress) as bar:
        task = bar.add_task("collect", total=len(jobs), accepted=0)
        for finished in run_episodes(policy, tagged, episode, config.concurrency, stop=stop):
            trajectory = _annotate(finished, number, oracle, by_id)
            store.add(finished)
            fresh.append(trajectory)
            if episode_verdict(trajectory, config.require_think) == "candidate":
                accepted += 1
            bar.update(task, advance=1, accepted=accepted)
    return fresh


def _annotate(finished: Episode, number: int, oracle: OraclePolicy | None, by_id: dict[str, Sample]) -> Trajectory:
    trajectory = finished.trajectory
    trajectory.meta["round"] = number
    trajectory.meta["patterns"] = classify_patterns(trajectory)
    if oracle is not None and trajectory.status is not Status.ERROR:
        # The plan is a pure function of (seed, sample, run): planning again gives its pattern.
        run = int(trajectory.meta.get("run", 0))
        try:
            plan = oracle.plan(by_id[trajectory.sample_id], run, tuple(trajectory.image_size))
            trajectory.meta["oracle_pattern"] = plan.pattern
        except (ValueError, OSError):
            pass
    return trajectory


def _pick_exemplars(
    accepted: list[Trajectory], already: list[Exemplar], by_id: dict[str, Sample], count: int, number: int
) -> list[Exemplar]:
    """Up to `count` trajectories accepted in round `number` for the pool: most patterns, then most turns."""
    taken = {exemplar.id for exemplar in already}
    candidates = [t for t in accepted if int(t.meta.get("round", 0)) == number and t.num_turns > 1]
    candidates.sort(key=lambda t: (-len(classify_patterns(t)), -t.num_turns, t.sample_id, int(t.meta.get("run", 0))))
    picked: list[Exemplar] = []
    for trajectory in candidates:
        exemplar = Exemplar.from_trajectory(trajectory, by_id[trajectory.sample_id])
        if exemplar.id in taken:
            continue
        picked.append(exemplar)
        taken.add(exemplar.id)
        if len(picked) >= count:
            break
    return picked


def collection_stats(
    stored: list[Trajectory], selection: Selection, samples: Sequence[Sample], config: CollectConfig, pool_log: list[dict[str, Any]]
) -> dict[str, Any]:
    """Acceptance per round, rejections by reason, turns per trajectory, pattern mix."""
    rounds = []
    for entry in pool_log:
        number = entry["round"]
        in_round = [t for t in stored if int(t.meta.get("round", 0)) == number]
        verdicts = Counter(selection.verdicts[(t.sample_id, int(t.meta.get("run", 0)))] for t in in_round)
        accepted = verdicts.pop("accepted", 0)
        rounds.append(
            {
                "round": number,
                "questions": entry["questions"],
                "episodes": len(in_round),
                "accepted": accepted,
                "acceptance_rate": round(accepted / len(in_round), 4) if in_round else None,
                "rejected": {reason: verdicts[reason] for reason in REJECTION_REASONS if verdicts[reason]},
                "exemplar_pool": len(entry["exemplars"]),
                "statuses": dict(Counter(t.status.value for t in in_round)),
            }
        )
    accepted = selection.accepted
    turns = Counter(t.num_turns for t in accepted)
    patterns = Counter(name for t in accepted for name in classify_patterns(t))
    oracle = Counter(str(t.meta["oracle_pattern"]) for t in accepted if "oracle_pattern" in t.meta)
    covered = len({t.sample_id for t in accepted})
    return {
        "questions": len(samples),
        "questions_with_trajectories": covered,
        "trajectories": len(accepted),
        "episodes": len(stored),
        "acceptance_rate": round(len(accepted) / len(stored), 4) if stored else None,
        "rounds": rounds,
        "rejected": dict(Counter(v for v in selection.verdicts.values() if v != "accepted")),
        "turns_histogram": {str(n): turns[n] for n in sorted(turns)},
        "mean_turns": round(sum(t.num_turns for t in accepted) / len(accepted), 3) if accepted else None,
        "more_than_10_turns": sum(1 for t in accepted if t.num_turns > 10),
        "patterns": {name: patterns[name] for name in ("direct", "depth_first", "trial_and_error", "goal_maintenance")},
        "oracle_patterns": dict(sorted(oracle.items())),
        "policy": config.policy,
        "per_question": config.per_question,
        "max_one_turn_share": config.max_one_turn_share,
    }


__all__ = [
    "POLICY_KINDS",
    "REJECTION_REASONS",
    "RESUME_FIELDS",
    "CollectConfig",
    "CollectDirError",
    "CollectReport",
    "Selection",
    "action_signature",
    "build_collect_policy",
    "check_resumable",
    "collect",
    "collection_stats",
    "episode_verdict",
    "load_samples",
    "round_dir",
    "select_trajectories",
]


def _write_episode_settings(folder: Path, config: CollectConfig) -> None:
    """Record beside the SFT data how its episodes were run, so the SFT model remembers it (mini_o3_episode.json)."""
    from mini_o3.models.episode_settings import EpisodeSettings, write_episode_settings

    write_episode_settings(
        folder,
        EpisodeSettings(
            view_max_pixels=config.max_pixels, view_min_pixels=config.min_pixels, max_turns=config.max_turns,
            max_new_tokens=config.max_new_tokens, numbering=config.numbering, max_context_tokens=config.max_context_tokens,
            train_max_turns=config.max_turns, train_max_images=config.max_images, written_by="collect",
        ),
    )
