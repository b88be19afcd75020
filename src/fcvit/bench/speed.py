"""Speed and memory of models side by side: inference and train-step throughput, peak memory, onnxruntime.

Every (model, mode) pair is one workload; :func:`fcvit.bench.timing.interleaved_times` runs them in rounds so
that all models see the same machine, and the ratio to a reference model is the median of per-round ratios.
Peak memory is measured per (model, mode) on its own: on CUDA as ``max_memory_allocated`` above what was
allocated before, on CPU in a fresh subprocess (see :mod:`fcvit.bench.memory`) as the growth of its peak RSS
(``ru_maxrss``) from after the imports to after the steps, so that no model inherits another's peak.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import timm
import torch
from torch import nn

from ..accel import is_optimized, optimize
from ..errors import command_backend
from ..hub import create
from ..models.complexity import count_gmacs, count_params
from ..runtime import allocator, set_threads, tune_cpu_allocator
from .memory import peak_rss_mb_in_subprocess, reset_peak_rss, rss_mb
from .timing import interleaved_times, round_ratios, summarize

PEERS = (
    "poolformer_s12",
    "poolformer_s24",
    "convnext_atto",
    "convnext_tiny",
    "resnet18",
    "resnet50",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
)
MODES = ("infer", "train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PLAIN_SUFFIX = ":plain"  # an FCViT-frame model as timm.create_model returns it, not optimised
TRITON_SUFFIX = ":triton"  # optimised with its depth-wise convs on the Triton kernels (CUDA, channels_last)
# NAME + suffix -> the fcvit.optimize backend it runs with (None: the plain model)
VARIANTS = {PLAIN_SUFFIX: None, TRITON_SUFFIX: "triton"}


@dataclass
class BenchConfig:
    """What to measure and how; every field is a ``fcvit bench`` option."""

    img_size: int = 224
    batch_size: int = 16
    modes: tuple[str, ...] = MODES
    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None
    rounds: int = 5
    warmup: int = 2
    steps: int = 1
    memory: bool = True
    onnx: bool = False
    onnx_opset: int = 18
    optimize: bool = True
    profile: str | None = None  # a folder: torch.profiler's operator table per model and mode (.profile)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(self.modes)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for but CUDA is not available")
        if self.profile and os.path.exists(self.profile) and not os.path.isdir(self.profile):
            raise ValueError(f"--profile {self.profile}: exists and is not a folder (the tables go into a folder)")
        if self.onnx and (not self.device.startswith("cpu") or self.dtype != "fp32"):
            raise ValueError("--onnx measures onnxruntime on CPU in fp32: use --device cpu --dtype fp32")


def model_of_spec(spec: str, img_size: int) -> nn.Module:
    """The plain model in eval mode of ``spec``, a model name with an optional ``:plain`` or ``:triton`` suffix
    (:data:`VARIANTS`; the ONNX export and the GMAC count take the plain model as it is), built by the front door
    (:func:`fcvit.hub.create`)."""
    name, colon, variant = spec.partition(":")
    suffix = colon + variant
    if suffix and suffix not in VARIANTS:
        raise ValueError(f"benchmark spec {spec!r}: unknown variant {variant!r} ({' or '.join(VARIANTS)})")
    model = create(name, img_size=img_size)
    if suffix and not is_optimized(optimize(model, "cpu")):
        raise ValueError(f"{spec!r}: fcvit.optimize changes nothing in {name} (not an FCViT-frame model)")
    return optimize(model, None).eval()


def backend_of(spec: str, cfg: BenchConfig) -> str | None:
    """The :func:`fcvit.optimize` backend ``spec`` runs with: its suffix's, else ``"auto"`` (None: plain)."""
    _, colon, variant = spec.partition(":")
    if colon:
        return VARIANTS[colon + variant]
    return command_backend(cfg.optimize)


@dataclass
class Workload:
    """One model prepared for benchmarking: a step function per mode and its static costs."""

    spec: str
    params_m: float
    gmacs: float
    steps: dict[str, Callable[[], object]] = field(default_factory=dict)


def _autocast(cfg: BenchConfig):
    if cfg.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cfg.device).type, dtype=DTYPES[cfg.dtype])


def build_workload(spec: str, cfg: BenchConfig, modes: tuple[str, ...] | None = None) -> Workload:
    """Model, input batch and one step function per mode: inference forward, or forward + backward + AdamW step."""
    model = model_of_spec(spec, cfg.img_size)
    size = (3, cfg.img_size, cfg.img_size)
    work = Workload(spec, count_params(model) / 1e6, count_gmacs(model, size))
    optimize(model, backend_of(spec, cfg))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(cfg.device, memory_format=memory_format)
    x = torch.randn(cfg.batch_size, *size, device=cfg.device).contiguous(memory_format=memory_format)
    target = torch.randint(0, getattr(model, "num_classes", 1000) or 1, (cfg.batch_size,), device=cfg.device)
    forward = torch.compile(model) if cfg.compile else model
    modes = modes or cfg.modes
    if "infer" in modes:

        def infer() -> None:
            model.eval()
            with torch.inference_mode(), _autocast(cfg):
                forward(x)

        work.steps["infer"] = infer
    if "train" in modes:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as fcvit train runs it

        def train() -> None:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with _autocast(cfg):
                loss = nn.functional.cross_entropy(forward(x), target)
            loss.backward()
            optimizer.step()

        work.steps["train"] = train
    return work


def onnx_step(model: nn.Module, cfg: BenchConfig, directory: str) -> Callable[[], object]:
    """Export ``model`` to ONNX in ``directory`` and return an onnxruntime CPU inference step on one batch."""
    import numpy as np
    import onnxruntime as ort

    from ..export import export_onnx

    path = os.path.join(directory, f"model_{len(os.listdir(directory))}.onnx")
    export_onnx(model, path, cfg.img_size, opset=cfg.onnx_opset)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.threads or torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=np.float32)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _cuda_peak_mb(step: Callable[[], object], device: str, repeats: int = 2) -> float:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def machine_info(cfg: BenchConfig) -> dict[str, object]:
    """Where and when: CPU (or GPU) model, thread count, load average, library versions, date."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info: dict[str, object] = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        timm=timm.__version__,
        python=platform.python_version(),
        allocator=allocator(),
    )
    if cfg.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(cfg.device)
    with contextlib.suppress(OSError):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def run_benchmark(specs: list[str], cfg: BenchConfig, reference: str | None = None) -> dict[str, object]:
    """Benchmark every model spec under ``cfg``; return rows (one per model) plus config and machine info.

    ``reference`` (default: the first spec that is not an FCViT model, else the first spec) is the model
    every row's throughput ratio is taken against, per round.
    """
    if not specs:
        raise ValueError("no models to benchmark")
    if len(set(specs)) != len(specs):
        raise ValueError(f"a model is listed twice: {specs}")
    triton = [s for s in specs if s.endswith(TRITON_SUFFIX)]
    if triton and not (cfg.device.startswith("cuda") and cfg.channels_last):
        raise ValueError(
            f"{triton}: the Triton depth-wise kernels run on CUDA channels_last maps only "
            "(use --device cuda --channels-last)"
        )
    reference = reference or next((s for s in specs if "fcvit" not in s), specs[0])
    if reference not in specs:
        raise ValueError(f"reference model {reference!r} is not among the benchmarked models {specs}")
    if cfg.threads:
        set_threads(cfg.threads)
    info = machine_info(cfg)
    workloads = {s: build_workload(s, cfg) for s in specs}
    load = info.get("loadavg_start", [0.0])[0]
    if load > 0.5 * (os.cpu_count() or 1):
        warnings.warn(
            f"load average {load:.2f} on {os.cpu_count()} CPUs before the benchmark: other processes compete "
            "for the cores and multi-threaded timings (small operators most) can be many times slower",
            stacklevel=2,
        )
    steps = {(s, m): fn for s, w in workloads.items() for m, fn in w.steps.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.onnx:
            for s in specs:
                steps[(s, "onnx")] = onnx_step(model_of_spec(s, cfg.img_size), cfg, tmp)
        sync = (lambda: torch.cuda.synchronize(cfg.device)) if cfg.device.startswith("cuda") else None
        times = interleaved_times(steps, rounds=cfg.rounds, warmup=cfg.warmup, steps=cfg.steps, sync=sync)
    with contextlib.suppress(OSError):
        info["loadavg_end"] = list(os.getloadavg())
    rows = []
    for s, w in workloads.items():
        row: dict[str, object] = dict(model=s, params_m=round(w.params_m, 3), gmacs=round(w.gmacs, 3))
        for mode in (*cfg.modes, *(("onnx",) if cfg.onnx else ())):
            seconds = times[(s, mode)]
            throughput = summarize([cfg.batch_size / t for t in seconds])
            row[f"{mode}_img_s"] = {k: round(v, 2) for k, v in throughput.items()}
            ratio = summarize(round_ratios(times[(reference, mode)], seconds))
            row[f"{mode}_vs_ref"] = round(ratio["median"], 3)
            row[f"{mode}_vs_ref_iqr"] = [round(ratio["q1"], 3), round(ratio["q3"], 3)]
            row[f"{mode}_seconds"] = [round(t, 5) for t in seconds]  # per round, for re-analysis
        rows.append(row)
    if cfg.memory:
        for row in rows:
            for mode in cfg.modes:
                row[f"{mode}_peak_mb"] = round(peak_memory_mb(str(row["model"]), mode, cfg, workloads), 1)
    result = dict(config=asdict(cfg), reference=reference, machine=info, rows=rows)
    if cfg.profile:
        from .profile import profile_steps

        result["profiles"] = profile_steps({k: v for k, v in steps.items() if k[1] in MODES}, cfg.device, cfg.profile)
    return result


def peak_memory_mb(spec: str, mode: str, cfg: BenchConfig, workloads: dict[str, Workload] | None = None) -> float:
    """Peak memory of ``mode`` steps of ``spec``: CUDA max allocated, or CPU peak-RSS growth in a subprocess."""
    if cfg.device.startswith("cuda"):
        work = (workloads or {}).get(spec) or build_workload(spec, cfg, (mode,))
        return _cuda_peak_mb(work.steps[mode], cfg.device)
    return peak_rss_mb_in_subprocess(spec, mode, asdict(cfg))


def _load(machine: dict, when: str) -> str:
    load = machine.get(f"loadavg_{when}")
    return f"{load[0]:.2f}" if load else "?"


def format_markdown(result: dict[str, object]) -> str:
    """The rows of :func:`run_benchmark` as a Markdown table with a one-line header of conditions."""
    cfg, rows, ref = result["config"], result["rows"], result["reference"]
    machine = result["machine"]
    modes = [*cfg["modes"], *(["onnx"] if cfg["onnx"] else [])]
    header = ["model", "params (M)", f"GMACs @{cfg['img_size']}"]
    for mode in modes:
        label = "onnxruntime infer" if mode == "onnx" else mode
        header += [f"{label} img/s (median [IQR])", f"{label} x {ref} (median [IQR] of rounds)"]
    if cfg["memory"]:
        header += [f"{m} peak {'CUDA' if cfg['device'].startswith('cuda') else 'RSS'} (MB)" for m in cfg["modes"]]
    lines = [
        f"{machine['date']} · {machine.get('gpu', machine['cpu'])} · torch {machine['torch']} · "
        f"{machine['torch_threads']} threads · {cfg['device']} {cfg['dtype']} · batch {cfg['batch_size']} · "
        f"{'channels_last' if cfg['channels_last'] else 'NCHW'}{' · compiled' if cfg['compile'] else ''} · "
        f"malloc: {machine.get('allocator', 'default')} · "
        f"{cfg['rounds']} rounds x {cfg['steps']} steps · load average {_load(machine, 'start')} -> "
        f"{_load(machine, 'end')}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for r in rows:
        cells = [str(r["model"]), f"{r['params_m']:.2f}", f"{r['gmacs']:.2f}"]
        for mode in modes:
            t = r[f"{mode}_img_s"]
            q1, q3 = r[f"{mode}_vs_ref_iqr"]
            cells += [
                f"{t['median']:.1f} [{t['q1']:.1f}, {t['q3']:.1f}]",
                f"{r[f'{mode}_vs_ref']:.2f} [{q1:.2f}, {q3:.2f}]",
            ]
        if cfg["memory"]:
            cells += [f"{r[f'{m}_peak_mb']:.0f}" for m in cfg["modes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _memory_child(request: str) -> None:
    """Run in a fresh interpreter by :func:`fcvit.bench.memory.peak_rss_mb_in_subprocess`: build the workload of
    ``request`` and print the growth of the peak RSS over its steps as JSON."""
    import json

    args = json.loads(request)
    if args["tune_malloc"]:
        tune_cpu_allocator()
    cfg = BenchConfig(**{**args["cfg"], "modes": tuple(args["cfg"]["modes"])})
    if cfg.threads:
        set_threads(cfg.threads)
    baseline = rss_mb("VmRSS")
    reset_peak_rss()
    step = build_workload(args["spec"], cfg, (args["mode"],)).steps[args["mode"]]
    for _ in range(cfg.warmup + 2):
        step()
    print(json.dumps(dict(peak_mb=rss_mb("VmHWM") - baseline, baseline_mb=baseline)))


if __name__ == "__main__":
    import sys

    _memory_child(sys.argv[1])
