"""Loaders for the public benchmarks and a generic JSON/JSONL form, read from their published files.

Every loader is a generator of `Sample` (a good record) or `BadRecord` (a record that cannot
be used, with the file, the record and the fix); `mini_o3.data.loading.load_dataset` turns
those into a `LoadResult`, raising on the first bad record or skipping and counting them.
File-level problems (a missing file, a file that is not JSON, a table without its columns)
raise `DatasetError` at once. Images are never decoded here: loaders only check that files
exist, except HR-Bench, whose base64 column is written once to an on-disk cache (see
`iter_hrbench`).

Multiple-choice prompt form. V* ships its options inside `text`, in the form
"{question}\\n(A) ..\\n(B) ..\\nAnswer with the option's letter from the given choices directly."
HR-Bench and MME-RealWorld ship question and options apart; `multiple_choice_question` writes
them in that same V* form so every multiple-choice benchmark reads alike to the model. The
question as published stays in `meta["raw_question"]`.

The facts each loader relies on are in shared/reference/benchmarks.md; where a fact is
unconfirmed there, the loader accepts the plausible variants and says so.

Where each part lives (every name below is re-exported here, so
`from mini_o3.data.benchmarks import ...` works as before):

- `common`: `DatasetError`, `BadRecord`, `Record`, `RecordProblem`, `build_records` and the
  shared helpers (image paths, option parsing, answer letters, the cache folder, JSON/JSONL reading)
- `visualprobe`: `iter_visualprobe`
- `vstar`: `iter_vstar` (V* Bench)
- `hrbench`: `iter_hrbench` (TSV/parquet rows and the base64 image cache)
- `mme_realworld`: `iter_mme_realworld`, `iter_mme_realworld_lite`, `find_mme_lite_json`
- `generic`: `iter_generic` (our generic JSON/JSONL form)
"""

from mini_o3.data.benchmarks.common import (
    CACHE_ENV,
    MULTIPLE_CHOICE_INSTRUCTION,
    BadRecord,
    DatasetError,
    Record,
    RecordProblem,
    answer_letter,
    build_records,
    default_cache_dir,
    existing_image,
    multiple_choice_question,
    parse_choice,
    parse_json_line,
    parse_option_lines,
    safe_image_path,
    safe_sample,
)
from mini_o3.data.benchmarks.generic import iter_generic
from mini_o3.data.benchmarks.hrbench import iter_hrbench
from mini_o3.data.benchmarks.mme_realworld import find_mme_lite_json, iter_mme_realworld, iter_mme_realworld_lite
from mini_o3.data.benchmarks.visualprobe import iter_visualprobe
from mini_o3.data.benchmarks.vstar import iter_vstar

__all__ = [
    "CACHE_ENV",
    "MULTIPLE_CHOICE_INSTRUCTION",
    "BadRecord",
    "DatasetError",
    "Record",
    "RecordProblem",
    "answer_letter",
    "build_records",
    "default_cache_dir",
    "existing_image",
    "find_mme_lite_json",
    "iter_generic",
    "iter_hrbench",
    "iter_mme_realworld",
    "iter_mme_realworld_lite",
    "iter_visualprobe",
    "iter_vstar",
    "multiple_choice_question",
    "parse_choice",
    "parse_json_line",
    "parse_option_lines",
    "safe_image_path",
    "safe_sample",
]
