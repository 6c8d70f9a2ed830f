"""Run configs: flat YAML whose keys are TRL's own argument names plus this project's few fields.

``load_config(kind, path, overrides)`` reads the YAML, applies ``key=value`` overrides, checks everything that can
be checked before a model is loaded (unknown keys, batch divisibility, vLLM context length, bf16 support, paths),
reports every problem at once with its key, and returns the TRL config subclass for the job.

TRL (and torch with it) is imported only to build a config: ``check_values`` reads TRL's field names and types
from ``trl_fields.json`` (saved from the pinned TRL; ``python -m rlvsdistill.config`` rewrites it), so the
submitter checks configs with the ``cluster`` extra alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS, PROMPT_TEMPLATES
from .grading import EXTRACT_MODES
from .io import UserError
from .metrics import KEYWORD_MATCHES, LENGTH_UNITS

PROMPT_TEMPLATE_NAMES = (*PROMPT_TEMPLATES, "chat")
REWARD_SCALES = ("plus_minus_one", "binary")
GRADER_WORKERS_HELP = "grading processes per rank (default: the pod's CPU request / LOCAL_WORLD_SIZE)"


@dataclass
class ProjectFields:
    """Fields every job of this project shares, beside TRL's own arguments."""

    model_name_or_path: str = field(default="", metadata={"help": "model directory (on the PVC) or Hub id"})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision (commit) of the model"})
    dataset_name: str = field(
        default="math_train",
        metadata={"help": f"{', '.join(DATASETS)}, or a local .jsonl/.parquet path (MATH format)"},
    )
    dataset_split: str | None = field(default=None, metadata={"help": "split of a Hub dataset (default: its own)"})
    max_problems: int | None = field(default=None, metadata={"help": "use only the first N problems (tests, demos)"})
    prompt_template: str = field(
        default="qwen_math", metadata={"help": f"prompt template: {', '.join(PROMPT_TEMPLATE_NAMES)}"}
    )
    run_name_tag: str | None = field(default=None, metadata={"help": "free-form label saved in the run record"})


@dataclass
class BatchFields:
    """What a training config means its global batch to be, checked against the processes it runs on."""

    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "the global batch this config means (GRPO: completions, SFT: sequences per optimizer step) "
                  "= per_device_train_batch_size x gradient_accumulation_steps x processes; submit and the "
                  "trainer refuse to run when the cluster's process count gives another value; unset = unchecked"},
    )


@dataclass
class GRPOFields(BatchFields, ProjectFields):
    """GRPO-only project fields."""

    reward_scale: str = field(
        default="plus_minus_one", metadata={"help": "plus_minus_one (+1/-1, the paper) or binary (1/0)"}
    )
    answer_extract: str = field(
        default="box", metadata={"help": f"reward's answer extraction: {', '.join(EXTRACT_MODES)}"}
    )
    format_reward_weight: float = field(
        default=0.0, metadata={"help": "weight of a format reward (a \\boxed{} answer, and R1 tags); 0 = off"}
    )
    max_prompt_tokens: int = field(
        default=512, metadata={"help": "longest prompt in tokens (longer problems are dropped); sets vLLM's budget"}
    )
    zero_reward_warn_steps: int = field(
        default=20, metadata={"help": "warn when no completion was correct for this many reward calls in a row"}
    )
    grader_workers: int | None = field(default=None, metadata={"help": GRADER_WORKERS_HELP})


@dataclass
class SFTFields(BatchFields, ProjectFields):
    """SFT-only project fields (the dataset is a JSONL of prompt/completion pairs from `rlvsdistill generate`)."""

    dataset_name: str = field(default="", metadata={"help": "JSONL of {prompt, completion} records"})


@functools.cache
def _trl_config_classes() -> dict[str, type]:
    """GRPORunConfig and SFTRunConfig: TRL's configs plus this project's fields (imports TRL and torch)."""
    from trl import GRPOConfig, SFTConfig

    @dataclass
    class GRPORunConfig(GRPOFields, GRPOConfig):
        """TRL's GRPOConfig plus this project's fields."""

    @dataclass
    class SFTRunConfig(SFTFields, SFTConfig):
        """TRL's SFTConfig plus this project's fields."""

    classes = {"grpo": GRPORunConfig, "sft": SFTRunConfig}
    for cls in classes.values():  # module-level names, so that pickle (torch.save of the training args) finds them
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return classes


def __getattr__(name: str):
    if name in ("GRPORunConfig", "SFTRunConfig"):
        return _trl_config_classes()[name[:-9].lower()]
    raise AttributeError(name)


@dataclass
class SamplingFields:
    """How to sample a model: n per problem and the sampling parameters (the paper's evaluation: 256 at
    temperature 0.9, top_p 1.0, top_k 50; its teachers: 0.6 / 0.95 / 50)."""

    n: int = field(default=1, metadata={"help": "samples per problem"})
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 50
    max_tokens: int = field(default=1024, metadata={"help": "longest completion, in tokens"})
    seed: int = field(default=0, metadata={"help": "run seed; each problem's seed derives from it"})
    backend: str = field(default="auto", metadata={"help": "auto (vLLM when usable, else HF), vllm, or hf"})
    tensor_parallel_size: int = 1
    vllm_max_model_length: int | None = None
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={
        "help": "vLLM's share of GPU memory (of RAM on vLLM's CPU build)"})


@dataclass
class ShardedRunFields:
    """A sampling run split over the pods of an indexed Job: shards of problems, resumable parts, one merge."""

    output_dir: str = field(default="", metadata={"help": "the run directory (relative: under $RLVSDISTILL_ROOT)"})
    num_shards: int = field(default=1, metadata={"help": "problem shards (one per pod of an indexed Job)"})
    shard_index: int | None = field(
        default=None, metadata={"help": "this process's shard (default: $JOB_COMPLETION_INDEX, else 0)"}
    )
    part_size: int = field(default=8, metadata={"help": "problems per atomically written part (the resume unit)"})
    ks: list[int] | None = field(default=None, metadata={"help": "pass@k values (default 1, 2, 4, ..., n)"})
    length_unit: str = field(
        default="chars", metadata={"help": "response lengths in characters (chars, as the released code) or in the "
                                  "generated tokens (tokens)"})
    keyword_match: str = field(
        default="word", metadata={"help": "reflection keywords counted as whole words or phrases (word: 'ok' is not "
                                  "counted in 'look'), or as plain lower-case substrings (substring)"})
    grader_workers: int | None = field(default=None, metadata={"help": GRADER_WORKERS_HELP})
    merge_wait_seconds: int = field(
        default=0, metadata={"help": "the merge waits up to this long for every shard to finish (a merge Job)"}
    )


@dataclass
class GenerateConfig(SamplingFields, ShardedRunFields, ProjectFields):
    """`rlvsdistill generate`: sample a teacher (sharded like eval), grade, merge, filter, write distillation data."""

    output_file: str = field(default="", metadata={"help": "the JSONL of prompt/completion records to write"})
    student_prompt_template: str | None = field(
        default=None, metadata={"help": "template of the prompts written for the student (default: prompt_template)"}
    )
    answer_extract: str = field(default="box", metadata={"help": f"answer extraction: {', '.join(EXTRACT_MODES)}"})
    keep: str = field(default="correct", metadata={"help": "correct (the paper) or all samples"})
    student_results: str | None = field(
        default=None,
        metadata={"help": "summary.json of the student's evaluation: keep only problems it solved at least once "
                  "(the paper's 'reasoning patterns only' setting); unset = all problems"},
    )
    max_per_problem: int | None = field(default=None, metadata={"help": "at most this many kept samples per problem"})
    teacher_samples: str | None = field(
        default=None,
        metadata={"help": "the merged samples directory of another generate run (relative: under $RLVSDISTILL_ROOT): "
                  "sample nothing, only filter those samples into output_file (one teacher run, a filter per "
                  "student); the sampling keys must equal that run's"},
    )

    def __post_init__(self):
        if not self.output_dir and self.output_file:  # the samples' run directory, beside the output file
            self.output_dir = str(Path(self.output_file).with_suffix("")) + ".samples"


@dataclass
class EvalConfig(SamplingFields, ShardedRunFields, ProjectFields):
    """`rlvsdistill eval`: n samples per problem, sharded and resumable, graded, summarized."""

    dataset_name: str = field(
        default="math500", metadata={"help": f"{', '.join(DATASETS)}, or a .jsonl/.parquet path"}
    )
    answer_extract: str = field(
        default="box", metadata={"help": f"box (the paper's 'with format'), or: {', '.join(EXTRACT_MODES)}"}
    )


PROJECT_CLASSES = {"grpo": GRPOFields, "sft": SFTFields, "generate": GenerateConfig, "eval": EvalConfig}
TRL_KINDS = ("grpo", "sft")
TRL_FIELDS_FILE = Path(__file__).with_name("trl_fields.json")


def config_class(kind: str):
    """The config dataclass of a job kind (for 'grpo' and 'sft' this imports TRL)."""
    if kind not in PROJECT_CLASSES:
        raise UserError(f"unknown job kind {kind!r}; expected one of {', '.join(PROJECT_CLASSES)}")
    return _trl_config_classes()[kind] if kind in TRL_KINDS else PROJECT_CLASSES[kind]


def trl_field_types() -> dict[str, dict[str, str]]:
    """{kind: {field: type name}} of TRL's GRPOConfig and SFTConfig, read from the installed TRL."""
    from trl import GRPOConfig, SFTConfig

    return {kind: {f.name: _type_name(f.type) for f in dataclasses.fields(cls)}
            for kind, cls in (("grpo", GRPOConfig), ("sft", SFTConfig))}


def field_types(kind: str) -> dict[str, str]:
    """{field: type name} of a job kind's config, without importing TRL."""
    if kind not in PROJECT_CLASSES:
        raise UserError(f"unknown job kind {kind!r}; expected one of {', '.join(PROJECT_CLASSES)}")
    own = {f.name: _type_name(f.type) for f in dataclasses.fields(PROJECT_CLASSES[kind])}
    if kind not in TRL_KINDS:
        return own
    return {**json.loads(TRL_FIELDS_FILE.read_text())[kind], **own}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['learning_rate=1e-6', 'bf16=false'] -> {'learning_rate': 1e-06, 'bf16': False} (values read as YAML)."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from a file, with errors naming the file (and line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values")
    return data


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _type_name(tp) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def coerce_numbers(cls_or_types, values: dict[str, Any]) -> list[str]:
    """Turn numeric strings into numbers for int/float fields, in place (YAML 1.1 reads ``1e-6`` as a string).
    ``cls_or_types``: a dataclass, or {field: type name}.

    Returns a problem line for each value that is not a number where one is expected.
    """
    problems = []
    types = cls_or_types if isinstance(cls_or_types, dict) else {
        f.name: _type_name(f.type) for f in dataclasses.fields(cls_or_types)}
    for key, value in values.items():
        tp = types.get(key, "")
        if not isinstance(value, str) or not any(t in tp.replace(" ", "").split("|") for t in ("float", "int")):
            continue
        try:
            number = float(value)
            values[key] = int(number) if "float" not in tp and number.is_integer() else number
        except ValueError:
            problems.append(f"{key}: expected a number, got {value!r}")
    return problems


def check_values(kind: str, values: dict[str, Any], hardware: bool = True) -> list[str]:
    """Every problem with the raw values that can be found without loading a model, one line each.

    ``hardware=False`` skips what depends on this machine (bf16 support, local paths): CI validates the cluster's
    configs that way.
    """
    types = field_types(kind)
    problems = [f"{key}: unknown key for a {kind} config" for key in values if key not in types]
    problems += coerce_numbers(types, values)
    if not values.get("model_name_or_path"):
        problems.append("model_name_or_path: required")
    template = values.get("prompt_template", "qwen_math")
    if template not in PROMPT_TEMPLATE_NAMES:
        problems.append(f"prompt_template: {template!r} is not one of {', '.join(PROMPT_TEMPLATE_NAMES)}")
    dataset = str(values.get("dataset_name", "math_train" if kind == "grpo" else ""))
    if kind == "sft" and not dataset:
        problems.append("dataset_name: required (a JSONL of prompt/completion records)")
    elif dataset not in DATASETS and not dataset.endswith((".jsonl", ".parquet")):
        problems.append(f"dataset_name: {dataset!r} is neither {', '.join(DATASETS)} nor a .jsonl/.parquet path")
    elif hardware and dataset.endswith((".jsonl", ".parquet")) and not Path(dataset).exists():
        problems.append(f"dataset_name: {dataset} does not exist")
    model = str(values.get("model_name_or_path", ""))
    if hardware and model.startswith(("/", ".")) and not Path(model).exists():
        problems.append(f"model_name_or_path: {model} does not exist")
    bf16 = values.get("bf16", True)  # TRL's configs default to bf16
    if hardware and kind in TRL_KINDS and bf16 and not _bf16_supported():
        problems.append("bf16: true, but this machine has no GPU with bf16 support (set bf16: false, use_cpu: true)")
    workers = values.get("grader_workers")
    if kind in ("grpo", "eval", "generate") and workers is not None and (type(workers) is not int or workers < 1):
        problems.append(f"grader_workers: {workers!r} must be a positive integer, or unset for the pod's CPU "
                        "request divided by its ranks")
    if kind == "grpo":
        problems += _check_grpo(values)
    if kind in ("generate", "eval"):
        problems += _check_sampling(values)
        problems += _check_sharded_run(kind, values, hardware)
    if kind == "generate":
        problems += _check_generate(values, hardware)
    return problems


def _check_sampling(values: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("n", "max_tokens"):
        if not isinstance(values.get(key, 1), int) or values.get(key, 1) < 1:
            problems.append(f"{key}: must be a positive integer")
    if values.get("backend", "auto") not in ("auto", "vllm", "hf"):
        problems.append("backend: expected auto, vllm or hf")
    if values.get("answer_extract", "box") not in EXTRACT_MODES:
        problems.append(f"answer_extract: expected one of {', '.join(EXTRACT_MODES)}")
    return problems


def _check_sharded_run(kind: str, values: dict[str, Any], hardware: bool) -> list[str]:
    problems = []
    if kind == "eval" and not values.get("output_dir"):  # generate's defaults to beside its output_file
        problems.append("output_dir: required")
    shards, index = values.get("num_shards", 1), values.get("shard_index")
    if not isinstance(shards, int) or shards < 1:
        problems.append("num_shards: must be a positive integer")
    elif index is not None and not (isinstance(index, int) and 0 <= index < shards):
        problems.append(f"shard_index: {index} is outside 0..{shards - 1}")
    ks, n = values.get("ks"), values.get("n", 1)
    if ks is not None:
        if not isinstance(ks, list) or not all(isinstance(k, int) and k >= 1 for k in ks):
            problems.append("ks: expected a list of positive integers")
        elif isinstance(n, int) and max(ks) > n:
            problems.append(f"ks: pass@{max(ks)} needs at least {max(ks)} samples per problem, but n = {n}")
    if values.get("length_unit", "chars") not in LENGTH_UNITS:
        problems.append(f"length_unit: {values['length_unit']!r} is not one of {', '.join(LENGTH_UNITS)}")
    if values.get("keyword_match", "word") not in KEYWORD_MATCHES:
        problems.append(f"keyword_match: {values['keyword_match']!r} is not one of {', '.join(KEYWORD_MATCHES)}")
    if hardware and values.get("output_dir"):
        from .paths import resolve_output_dir

        problems += _check_writable(resolve_output_dir(values["output_dir"]), "output_dir")
    return problems


def _check_writable(path: Path, key: str) -> list[str]:
    """A problem line unless ``path`` exists as a writable directory or can be created as one."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return [f"{key}: {path} is not writable ({probe} is not a writable directory)"]
    return []


def _check_generate(values: dict[str, Any], hardware: bool) -> list[str]:
    problems = []
    if not values.get("output_file"):
        problems.append("output_file: required")
    if values.get("keep", "correct") not in ("correct", "all"):
        problems.append("keep: expected correct or all")
    template = values.get("student_prompt_template")
    if template is not None and template not in PROMPT_TEMPLATE_NAMES:
        problems.append(f"student_prompt_template: {template!r} is not one of {', '.join(PROMPT_TEMPLATE_NAMES)}")
    if values.get("teacher_samples") and values.get("output_dir"):
        problems.append("output_dir: a filter of teacher_samples samples nothing; it has no output_dir of its own")
    results = values.get("student_results")
    if hardware and results and not Path(results).is_file():
        problems.append(f"student_results: {results} does not exist")
    return problems


def _check_grpo(values: dict[str, Any]) -> list[str]:
    problems = []
    num_gen = values.get("num_generations", 8)
    # TRL's default: per-device batch x processes x steps_per_generation (itself defaulting to gradient
    # accumulation). The process count is unknown here, so 1; TRL checks the real value again at start.
    steps = values.get("steps_per_generation") or values.get("gradient_accumulation_steps", 1)
    gen_batch = values.get("generation_batch_size") or values.get("per_device_train_batch_size", 8) * steps
    if isinstance(num_gen, int) and isinstance(gen_batch, int) and num_gen > 0 and gen_batch % num_gen:
        problems.append(
            f"generation_batch_size: {gen_batch} is not divisible by num_generations ({num_gen})"
        )
    if values.get("reward_scale", "plus_minus_one") not in REWARD_SCALES:
        problems.append(f"reward_scale: expected one of {', '.join(REWARD_SCALES)}")
    if values.get("answer_extract", "box") not in EXTRACT_MODES:
        problems.append(f"answer_extract: expected one of {', '.join(EXTRACT_MODES)}")
    vllm_len = values.get("vllm_max_model_length")
    if values.get("use_vllm") and vllm_len is not None:
        need = values.get("max_prompt_tokens", 512) + values.get("max_completion_length", 256)
        if vllm_len < need:
            problems.append(
                f"vllm_max_model_length: {vllm_len} is below max_prompt_tokens + max_completion_length = {need}"
            )
    if values.get("vllm_mode", "colocate") not in ("colocate", "server"):
        problems.append("vllm_mode: expected colocate or server")
    if values.get("log_completions") and values.get("num_completions_to_print") is None:
        # TRL prints a table of that many completions every logging step; unset, every completion of the step
        # (280 in the paper's runs), which floods `kubectl logs` until the kubelet's rotation keeps only minutes.
        problems.append("log_completions: true prints every completion of each logging step; set "
                        "num_completions_to_print (e.g. 2), or log_completions: false")
    return problems


def global_batch_problems(values: dict[str, Any], processes: int) -> list[str]:
    """A problem line when ``global_batch_size`` is set and ``processes`` training processes give another value."""
    intended = values.get("global_batch_size")
    if intended is None:
        return []
    per_device = values.get("per_device_train_batch_size", 8)
    accumulation = values.get("gradient_accumulation_steps", 1)
    actual = per_device * accumulation * processes
    if actual == intended:
        return []
    hint = ""
    if intended % (per_device * processes) == 0:
        hint = f"; gradient_accumulation_steps={intended // (per_device * processes)} gives {intended} on {processes}"
    return [f"global_batch_size: the config means {intended}, but per_device_train_batch_size ({per_device}) x "
            f"gradient_accumulation_steps ({accumulation}) x {processes} processes = {actual}{hint}"]


def load_config(kind: str, path: str | os.PathLike, overrides: list[str] | None = None):
    """Read, check and build the config of a job (``grpo``, ``sft``, ``generate``); UserError lists every problem."""
    values = read_yaml(path)
    values.update(parse_overrides(overrides or []))
    problems = check_values(kind, values)
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    try:
        return config_class(kind)(**values)
    except (TypeError, ValueError) as exc:  # TRL's own __post_init__ checks
        raise UserError(f"{path}: {exc}") from None


if __name__ == "__main__":  # after changing the TRL pin: rewrite trl_fields.json from the installed TRL
    from .io import atomic_open

    with atomic_open(TRL_FIELDS_FILE) as f:
        f.write(json.dumps(trl_field_types(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TRL_FIELDS_FILE}")
