"""The placement plan: which weights live on the GPU and which in system RAM, in what precision, how
much context the KV cache holds, and how fast decode should be. ``make_plan`` is a pure function of
the model's tensor sizes, the hardware and the user's wishes; the engine executes the Plan it returns
and guesses nothing. ``plan_for`` resolves a model reference first and is the one entry point for
commands.

When VRAM is tight the planner gives things up in this order, cheapest first:
  1. the token embedding moves to RAM (one row is read per token);
  2. attention and lm_head weights go to int8 with per-row scales (unless the user forbids it);
  3. a context the user did not ask for shrinks, but not below 32k tokens;
  4. the experts of whole layers move to RAM, where the GPU reads each token's routed experts across
     PCIe: the first layers first, as llama.cpp's ``--n-cpu-moe N`` keeps them on the CPU, so the two
     can be compared side by side; any VRAM left over then goes back to context;
  5. a context the user did not ask for shrinks below 32k, down to 4k;
  6. with every expert in RAM, lm_head moves to RAM too;
  7. the whole model runs on the CPU; failing that the plan is refused, with the options that work.
A context the user asked for is never shrunk: the planner offloads more or refuses. Because each
step only ever adds offloaded layers, more VRAM never yields fewer GPU-resident experts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from . import speeds
from .errors import GptossError, ModelNotFoundError
from .hardware import GiB, Gpu, Hardware
from .model.config import GptOssConfig, official_config
from .sizes import checkpoint_sizes, index_total_size, tensor_sizes

OFFICIAL_MODELS = ("gpt-oss-20b", "gpt-oss-120b")
PLAN_FORMAT = 1
CONTEXT_STEP = 1024          # contexts the planner picks are multiples of this
COMFORTABLE_CONTEXT = 32768  # below this, offloading experts beats a shorter context
MIN_CONTEXT = 4096           # the planner never picks less unless asked to
HOST_RUNTIME_BYTES = GiB     # Python, torch and the CUDA host libraries
MIN_CAPABILITY = (8, 0)      # bf16 and the Triton kernels need Ampere (RTX 30) or newer
ESTIMATE_DEPTH = 4096        # decode speed is estimated at this many tokens into a conversation
GPU_EFFICIENCY = 0.7         # share of datasheet bandwidth reached at batch 1 (llama.cpp, RTX 4090:
                             # 187 tok/s of a 272 tok/s floor; specs/performance.md)

# Datasheet memory bandwidth, GB/s, matched as the longest key contained in the upper-cased name.
GPU_BANDWIDTH_GB_S = {
    "RTX 3060": 360, "RTX 3060 TI": 448, "RTX 3070": 448, "RTX 3070 TI": 608, "RTX 3080": 760,
    "RTX 3080 TI": 912, "RTX 3090": 936, "RTX 3090 TI": 1008,
    "RTX 4060": 272, "RTX 4060 TI": 288, "RTX 4070": 504, "RTX 4070 TI SUPER": 672, "RTX 4080": 717,
    "RTX 4080 SUPER": 736, "RTX 4090": 1008,
    "RTX 5060": 448, "RTX 5070": 672, "RTX 5070 TI": 896, "RTX 5080": 960, "RTX 5090": 1792,
    "RTX 3080 LAPTOP": 448, "RTX 4060 LAPTOP": 256, "RTX 4070 LAPTOP": 256, "RTX 4080 LAPTOP": 432,
    "RTX 4090 LAPTOP": 576, "RTX 5090 LAPTOP": 896,
    "RTX A4000": 448, "RTX A5000": 768, "RTX A6000": 768, "RTX 6000 ADA": 960, "RTX PRO 6000": 1792,
    "A10": 600, "L4": 300, "L40": 864, "A100": 1555, "A100 80GB": 1935, "A100-SXM4-80GB": 2039,
    "H100": 3350, "H100 PCIE": 2000, "H100 NVL": 3900, "H200": 4800, "GH200": 4000, "B200": 8000,
}
DEFAULT_GPU_BANDWIDTH_GB_S = 256.0  # an unknown card is assumed slow rather than fast


class PlanError(GptossError):
    """A plan file that cannot be read back."""


@dataclass(frozen=True)
class Bandwidths:
    """Inputs of the decode estimate, GB/s. ``gpu_gb_s=None`` looks the card up by name; given values
    are taken as they are. ``measured``: the date this machine measured ``pcie_gb_s`` (speeds.py), "" if
    assumed. ``cpu_share_gb_s``: the rate at which the CPU computes its share of experts kept in RAM, as a load
    timed it on this machine (0: not known yet; the estimate then counts the GPU's PCIe reads alone)."""

    gpu_gb_s: float | None = None
    host_gb_s: float = 40.0   # weights the CPU reads from RAM (llama.cpp, 16-core host: ~39)
    pcie_gb_s: float = 25.0   # pinned host -> GPU copies (PCIe 4.0 x16 in practice; 5.0 about twice)
    measured: str = ""
    cpu_share_gb_s: float = 0.0
    cpu_share: bool = True    # False: GPTOSS_CPU_EXPERTS=0, the GPU alone reads experts kept in RAM


# Experts kept in RAM are read by the GPU's kernels in place, across PCIe, at this share of the copy rate
# (H200 host, 2026-11-28: a whole offloaded decode token reached ~47 GB/s against 55.5 GB/s pinned copies).
IN_PLACE_FRACTION = 0.85


@dataclass(frozen=True)
class Wishes:
    context: int | None = None       # tokens the user asked for; None lets the planner choose
    quantize: bool = True            # may attention and lm_head go to int8 when VRAM is tight
    headroom_bytes: int = GiB        # VRAM left free for the CUDA context, fragmentation, the desktop
    prefill_chunk: int = 512         # tokens per prefill step; sizes the activation workspace
    bandwidths: Bandwidths = field(default_factory=Bandwidths)


@dataclass(frozen=True)
class Part:
    """One row of the plan's bill of materials: what, where ("gpu"|"cpu"), in what form, how big."""

    name: str
    where: str
    precision: str
    bytes: int


@dataclass(frozen=True)
class Plan:
    """What runs where. The engine reads the fields up to ``refusal_reason``; the rest explains."""

    model: str
    device: str                      # "cuda:0" or "cpu"
    context_length: int              # tokens the KV cache is sized for
    requested_context: int | None
    embedding: str                   # "gpu" | "cpu"
    lm_head: str                     # "gpu" | "cpu"
    attn_precision: str              # "bf16" | "int8"
    lm_head_precision: str           # "bf16" | "int8"
    experts_on_gpu: tuple[int, ...]  # layers whose experts are GPU-resident; the rest stay in RAM, MXFP4
    expert_cache_slots: int          # GPU cache slots for offloaded experts (0: none yet)
    kv_cache_bytes: int
    gpu_bytes: int                   # weights + KV cache + workspace on the GPU (headroom excluded)
    host_bytes: int                  # weights + runtime (+ KV and workspace on "cpu") in system RAM
    est_decode_tok_s: float
    notes: tuple[str, ...]
    fits: bool
    refusal_reason: str | None
    suggestions: tuple[str, ...]     # options that would work, when refused
    gpu_name: str | None
    vram_bytes: int                  # free VRAM planned against (0 on "cpu")
    ram_bytes: int                   # available RAM planned against
    headroom_bytes: int
    prefill_chunk: int
    workspace_bytes: int
    parts: tuple[Part, ...]

    def to_json(self) -> str:
        return json.dumps({"format": PLAN_FORMAT, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.pop("format", None) != PLAN_FORMAT:
            raise PlanError(f"plan: expected a JSON object with \"format\": {PLAN_FORMAT}",
                            hint="write a fresh one with `gptoss plan --json`")
        names = {f.name for f in fields(cls)}
        if set(raw) != names:
            extra, missing = sorted(set(raw) - names), sorted(names - set(raw))
            raise PlanError(f"plan: unknown fields {extra}, missing fields {missing}")
        try:
            raw["experts_on_gpu"] = tuple(int(i) for i in raw["experts_on_gpu"])
            raw["notes"] = tuple(str(n) for n in raw["notes"])
            raw["suggestions"] = tuple(str(s) for s in raw["suggestions"])
            raw["parts"] = tuple(Part(**p) for p in raw["parts"])
        except (TypeError, ValueError) as exc:
            raise PlanError(f"plan: malformed list field ({exc})") from None
        plan = cls(**raw)
        _check_plan(plan)
        return plan


def _check_plan(plan: Plan) -> None:
    allowed = {"device": ("cuda:0", "cpu"), "embedding": ("gpu", "cpu"), "lm_head": ("gpu", "cpu"),
               "attn_precision": ("bf16", "int8"), "lm_head_precision": ("bf16", "int8")}
    for name, values in allowed.items():
        if getattr(plan, name) not in values:
            raise PlanError(f"plan: field '{name}' must be one of {values}, got {getattr(plan, name)!r}")
    if not isinstance(plan.context_length, int) or plan.context_length <= 0:
        raise PlanError(f"plan: field 'context_length' must be a positive integer, got {plan.context_length!r}")


# ---- the model's bytes, grouped the way they are placed -----------------------------------------

@dataclass(frozen=True)
class ModelBytes:
    layers: int
    embedding: int
    lm_head: int
    lm_head_int8: int
    attention: tuple[int, ...]       # per layer, bf16: q/k/v/o, biases, sinks, both norms
    attention_int8: tuple[int, ...]  # the same with the q/k/v/o matrices in int8 + a bf16 scale per row
    router: tuple[int, ...]
    experts: tuple[int, ...]         # per layer, MXFP4 blocks + scales + bf16 biases
    other: int                       # final norm and any tensor the planner does not know
    kv_per_token: int                # KV bytes per token over the full-attention layers
    kv_fixed: int                    # KV bytes of the sliding layers (a fixed window)
    active_experts: float            # share of a layer's experts read per token (top-k / E)
    hidden: int
    num_experts: int = 1

    @property
    def expert_bytes(self) -> int:
        """One expert of the largest layer (the unit the expert cache and staging buffer hold)."""
        return max(self.experts, default=0) // max(self.num_experts, 1)

    @property
    def weights(self) -> int:
        return (self.embedding + self.lm_head + sum(self.attention) + sum(self.router)
                + sum(self.experts) + self.other)

    def kv_bytes(self, context: int) -> int:
        return self.kv_fixed + self.kv_per_token * context

    def routed_bytes(self, layers: slice) -> float:
        """Expert bytes one decode token reads in ``layers`` (its top-k experts of each)."""
        return sum(self.experts[layers]) * self.active_experts


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_PROJ = re.compile(r"self_attn\.[qkvo]_proj\.weight")


def model_bytes(config: GptOssConfig, sizes: dict[str, int]) -> ModelBytes:
    """Group tensor sizes into what the planner places; every byte lands in exactly one group."""
    n = config.num_hidden_layers
    attention, proj, router, experts = [0] * n, [0] * n, [0] * n, [0] * n
    embedding = sizes.get("model.embed_tokens.weight", 0)
    lm_head = sizes.get("lm_head.weight", embedding if config.tie_word_embeddings else 0)
    other = 0
    for name, size in sizes.items():
        m = _LAYER.fullmatch(name)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            continue
        if not m or int(m.group(1)) >= n:
            other += size
            continue
        layer, rest = int(m.group(1)), m.group(2)
        if rest.startswith("mlp.experts."):
            experts[layer] += size
        elif rest.startswith("mlp.router."):
            router[layer] += size
        else:
            attention[layer] += size
            if _PROJ.fullmatch(rest):
                proj[layer] += size
    if config.tie_word_embeddings:  # one tensor serves both; it is counted (and placed) as lm_head
        embedding = 0
    rows = config.q_dim + 2 * config.kv_dim + config.hidden_size
    kv_token = 2 * config.kv_dim * 2  # k and v, bf16
    return ModelBytes(
        layers=n, embedding=embedding, lm_head=lm_head,
        lm_head_int8=lm_head // 2 + config.vocab_size * 2,
        attention=tuple(attention),
        attention_int8=tuple(a - p + p // 2 + rows * 2 for a, p in zip(attention, proj, strict=True)),
        router=tuple(router), experts=tuple(experts), other=other,
        kv_per_token=kv_token * len(config.full_layers),
        kv_fixed=kv_token * config.sliding_window * len(config.sliding_layers),
        active_experts=config.num_experts_per_tok / config.num_local_experts,
        hidden=config.hidden_size, num_experts=config.num_local_experts,
    )


def workspace_bytes(config: GptOssConfig, chunk: int) -> int:
    """Activations of one prefill chunk: fp32 logits for the chunk, the per-token intermediates
    (twice, for temporaries) and one expert dequantised to bf16. Assumes attention is tiled, so
    scores do not grow with the context."""
    h, inter = config.hidden_size, config.intermediate_size
    per_token = 4 * (4 * h + 2 * config.q_dim + 2 * config.kv_dim + config.num_local_experts
                     + config.num_experts_per_tok * 3 * inter)
    return config.vocab_size * chunk * 4 + 2 * chunk * per_token + 3 * inter * h * 2


def gpu_bandwidth_gb_s(name: str) -> tuple[float, bool]:
    """(datasheet GB/s, known) for a GPU name; unknown cards get a conservative default."""
    upper = name.upper()
    matches = [k for k in GPU_BANDWIDTH_GB_S if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", upper)]
    if not matches:
        return DEFAULT_GPU_BANDWIDTH_GB_S, False
    return float(GPU_BANDWIDTH_GB_S[max(matches, key=len)]), True


# ---- the search ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    device: str
    embedding: str
    attn_precision: str
    lm_head: str
    lm_head_precision: str
    offloaded: int  # experts of layers [0, offloaded) live in RAM
    context: int


class _Budget:
    """Byte accounting of a layout against the memory at hand."""

    def __init__(self, mb: ModelBytes, workspace: int, vram: int, ram: int, headroom: int) -> None:
        self.mb, self.workspace = mb, workspace
        self.gpu_budget, self.ram = vram - headroom, ram

    def parts(self, lay: _Layout) -> list[Part]:
        mb, on_gpu = self.mb, lay.device != "cpu"
        where = "gpu" if on_gpu else "cpu"
        attn = mb.attention_int8 if lay.attn_precision == "int8" else mb.attention
        lm = mb.lm_head_int8 if lay.lm_head_precision == "int8" else mb.lm_head
        n = lay.offloaded
        # On the CPU the engine computes in fp32 (bf16 matmuls are emulated there and many times slower), so the
        # float weights and the KV cache take twice their checkpoint size.
        f, fp = (1, "bf16") if on_gpu else (2, "fp32")
        attn_precision = lay.attn_precision if on_gpu else fp
        parts = [
            Part("token embedding", lay.embedding, fp if lay.embedding == "cpu" and not on_gpu else "bf16",
                 mb.embedding * f),
            Part(f"attention + norms, {mb.layers} layers", where, attn_precision, sum(attn) * f),
            Part("router + final norm", where, fp, (sum(mb.router) + mb.other) * f),
            Part(_layers_label("experts", n, mb.layers), where, "mxfp4", sum(mb.experts[n:])),
            Part(_layers_label("experts", 0, n), "cpu", "mxfp4", sum(mb.experts[:n])),
            # offloaded layers are computed from a GPU staging buffer that holds one layer's experts
            Part("expert staging (one layer)", where, "mxfp4", mb.expert_bytes * mb.num_experts if n and on_gpu else 0),
            Part("lm_head", lay.lm_head, lay.lm_head_precision if on_gpu else fp, lm * f),
            Part(f"KV cache, {lay.context} tokens", where, fp, mb.kv_bytes(lay.context) * f),
            Part("workspace (prefill chunk)", where, "fp32", self.workspace),
            Part("runtime (Python, torch)", "cpu", "-", HOST_RUNTIME_BYTES),
        ]
        return [p for p in parts if p.bytes]

    def usage(self, lay: _Layout) -> tuple[int, int]:
        parts = self.parts(lay)
        return (sum(p.bytes for p in parts if p.where == "gpu"), sum(p.bytes for p in parts if p.where == "cpu"))

    def gpu_fits(self, lay: _Layout) -> bool:
        return self.usage(lay)[0] <= self.gpu_budget

    def host_fits(self, lay: _Layout) -> bool:
        return self.usage(lay)[1] <= self.ram

    def fits(self, lay: _Layout) -> bool:
        gpu, host = self.usage(lay)
        return gpu <= self.gpu_budget and host <= self.ram

    def min_offload(self, lay: _Layout) -> int | None:
        """Fewest layers whose experts must leave the GPU for the GPU side to fit."""
        return next((n for n in range(self.mb.layers + 1) if self.gpu_fits(replace(lay, offloaded=n))), None)

    def max_offload(self, lay: _Layout) -> int:
        """Most layers whose experts RAM can take (-1: not even the rest fits)."""
        return next((n for n in range(self.mb.layers, -1, -1) if self.host_fits(replace(lay, offloaded=n))), -1)

    def max_context(self, lay: _Layout, lo: int, hi: int) -> int | None:
        """Largest context in [lo, hi] that fits: ``hi`` itself or a multiple of CONTEXT_STEP."""
        if self.fits(replace(lay, context=hi)):
            return hi
        best, a, b = None, -(-lo // CONTEXT_STEP), (hi - 1) // CONTEXT_STEP
        while a <= b:
            mid = (a + b) // 2
            if mid * CONTEXT_STEP >= lo and self.fits(replace(lay, context=mid * CONTEXT_STEP)):
                best, a = mid * CONTEXT_STEP, mid + 1
            else:
                b = mid - 1
        return best


def _cuda_layout(b: _Budget, s: _Search, quantize: bool, tied: bool) -> _Layout | None:
    """Walk the ladder of the module doc for a GPU; None when no GPU layout fits."""
    base = _Layout("cuda:0", "gpu", "bf16", "gpu", "bf16", 0, s.target)
    ladder = [base]
    if not tied:  # a tied embedding is lm_head's tensor and goes where lm_head goes
        ladder.append(replace(base, embedding="cpu"))
    if quantize and not tied:
        ladder.append(replace(ladder[-1], attn_precision="int8", lm_head_precision="int8"))
    elif quantize:
        ladder.append(replace(ladder[-1], attn_precision="int8"))
    for lay in ladder:
        if b.fits(lay):
            return lay
    lay = ladder[-1]
    if s.comfortable < s.target and (ctx := b.max_context(lay, s.comfortable, s.target)):
        return replace(lay, context=ctx)
    most = b.max_offload(lay)
    need = b.min_offload(replace(lay, context=s.comfortable))
    if need is not None and need <= most:
        lay = replace(lay, offloaded=need)
        return replace(lay, context=b.max_context(lay, s.comfortable, s.target) or s.comfortable)
    if s.floor < s.comfortable and most >= 0:
        ctx = b.max_context(replace(lay, offloaded=most), s.floor, s.comfortable)
        if ctx:
            need = b.min_offload(replace(lay, context=ctx))
            return replace(lay, offloaded=most if need is None else need, context=ctx)
    lay = replace(lay, embedding="cpu", lm_head="cpu", lm_head_precision="bf16", offloaded=b.mb.layers)
    ctx = b.max_context(lay, s.floor, s.target)
    return replace(lay, context=ctx) if ctx else None


def _cpu_layout(b: _Budget, s: _Search) -> _Layout | None:
    lay = _Layout("cpu", "cpu", "bf16", "cpu", "bf16", b.mb.layers, s.target)
    ctx = b.max_context(lay, s.floor, s.target)
    return replace(lay, context=ctx) if ctx else None


def _decode_tok_s(mb: ModelBytes, lay: _Layout, gpu_gb_s: float, bw: Bandwidths) -> float:
    """Tokens/s if decode were bound by memory traffic alone: bytes read per token over each link."""
    attn = sum(mb.attention_int8 if lay.attn_precision == "int8" else mb.attention)
    lm = mb.lm_head_int8 if lay.lm_head_precision == "int8" else mb.lm_head
    n = lay.offloaded
    dense = attn + sum(mb.router) + mb.other + mb.kv_bytes(min(lay.context, ESTIMATE_DEPTH))
    on_gpu_experts = mb.routed_bytes(slice(n, None))
    in_ram_experts = mb.routed_bytes(slice(n))
    if lay.device == "cpu":
        return bw.host_gb_s * 1e9 / (dense + lm + in_ram_experts)
    gpu = dense + on_gpu_experts + (lm if lay.lm_head == "gpu" else 0)
    host = lm if lay.lm_head == "cpu" else 0
    crossings = (lay.lm_head == "cpu") + (lay.embedding == "cpu")
    in_place = bw.pcie_gb_s * IN_PLACE_FRACTION * 1e9
    # routed experts in RAM: the GPU reads its columns in place while the CPU computes the rest, both at once
    seconds = (gpu / (gpu_gb_s * 1e9) + host / (bw.host_gb_s * 1e9)
               + in_ram_experts / (in_place + bw.cpu_share_gb_s * 1e9) + crossings * 2 * mb.hidden * 2 / in_place)
    return 1.0 / seconds


@dataclass
class _Search:
    """One planning attempt: the contexts it aimed for, the GPU it used, and the layout it found."""

    target: int       # the context wanted: the user's, or the model's maximum
    comfortable: int  # the context kept before experts move to RAM
    floor: int        # the least context the planner may pick
    gpu: Gpu | None
    budget: _Budget
    layout: _Layout | None
    notes: list[str]


def _usable_gpu(hardware: Hardware) -> tuple[Gpu | None, list[str]]:
    notes = []
    capable = [g for g in hardware.gpus if g.capability is None or g.capability >= MIN_CAPABILITY]
    for g in hardware.gpus:
        if g not in capable:
            notes.append(f"{g.name} (compute capability {g.capability[0]}.{g.capability[1]}) is older than "
                         f"Ampere (8.0): bf16 and the Triton kernels need an RTX 30 series or newer")
    gpu = max(capable, key=lambda g: g.free_bytes, default=None)
    if gpu and len(hardware.gpus) > 1:
        notes.append(f"uses one GPU: {gpu.name} (#{gpu.index}), the one with the most free VRAM")
    if gpu and gpu.free_bytes < gpu.total_bytes - GiB // 2:
        notes.append(f"planned against the {_gb(gpu.free_bytes)} of VRAM free now, of {_gb(gpu.total_bytes)} "
                     f"(other programs hold the rest)")
    return gpu, notes


def _search(config: GptOssConfig, mb: ModelBytes, hw: Hardware, wishes: Wishes) -> _Search:
    gpu, notes = _usable_gpu(hw)
    max_ctx, asked = config.max_position_embeddings, wishes.context
    if asked is not None:
        target = comfortable = floor = asked
    else:
        target, comfortable, floor = max_ctx, min(COMFORTABLE_CONTEXT, max_ctx), min(MIN_CONTEXT, max_ctx)
    workspace = workspace_bytes(config, wishes.prefill_chunk)
    budget = _Budget(mb, workspace, gpu.free_bytes if gpu else 0, hw.ram_available_bytes, wishes.headroom_bytes)
    s = _Search(target, comfortable, floor, gpu, budget, None, notes)
    if asked is not None and asked > max_ctx:
        return s
    if gpu:
        s.layout = _cuda_layout(budget, s, wishes.quantize, config.tie_word_embeddings)
        if s.layout:
            return s
    cpu_budget = _Budget(mb, workspace, 0, hw.ram_available_bytes, 0)
    lay = _cpu_layout(cpu_budget, s)
    if lay:
        s.budget, s.layout = cpu_budget, lay
    return s


def make_plan(config: GptOssConfig, sizes: dict[str, int], hardware: Hardware, wishes: Wishes = Wishes(),
              model: str = "") -> Plan:
    """The plan for ``config`` (with tensor ``sizes``) on ``hardware``; a refused plan says why,
    lists options that would fit, and describes the most compact layout it tried."""
    mb = model_bytes(config, sizes)
    s = _search(config, mb, hardware, wishes)
    if s.layout:
        notes = s.notes + _explain(mb, s, wishes)
        return _assemble(mb, s, s.layout, hardware, wishes, model, notes)
    quant = s.gpu is not None and wishes.quantize
    compact = _Layout("cuda:0" if s.gpu else "cpu", "cpu", "int8" if quant else "bf16", "gpu" if s.gpu else "cpu",
                      "int8" if quant and not config.tie_word_embeddings else "bf16", mb.layers,
                      min(s.floor, config.max_position_embeddings))
    refusal = _refusal(config, mb, hardware, wishes, s, compact)
    return replace(_assemble(mb, s, compact, hardware, wishes, model, s.notes, refusal),
                   suggestions=_suggestions(config, mb, hardware, wishes))


def _assemble(mb: ModelBytes, s: _Search, lay: _Layout, hw: Hardware, wishes: Wishes, model: str,
              notes: list[str], refusal: str | None = None) -> Plan:
    gpu_bytes, host_bytes = s.budget.usage(lay)
    on_gpu = lay.device != "cpu"
    bw = wishes.bandwidths
    if bw.gpu_gb_s is not None:
        gpu_gb_s = bw.gpu_gb_s
    else:
        peak, known = gpu_bandwidth_gb_s(s.gpu.name) if s.gpu else (DEFAULT_GPU_BANDWIDTH_GB_S, False)
        gpu_gb_s = peak * GPU_EFFICIENCY
        if on_gpu and not known and refusal is None:
            notes = [*notes, f"the speed estimate assumes {peak:.0f} GB/s for an unknown GPU ({s.gpu.name})"]
    speed = 0.0 if refusal else _decode_tok_s(mb, lay, gpu_gb_s, bw)
    parts = list(s.budget.parts(lay))
    slots = 0
    if on_gpu and lay.offloaded and refusal is None and mb.expert_bytes:
        # VRAM the layout leaves over caches offloaded experts (least recently used out), up to all of them
        spare = max(0, s.budget.gpu_budget - gpu_bytes)
        slots = min(spare // mb.expert_bytes, mb.num_experts * lay.offloaded)
        if slots:
            parts.append(Part(f"expert cache, {slots} experts", "gpu", "mxfp4", slots * mb.expert_bytes))
            gpu_bytes += slots * mb.expert_bytes
    return Plan(
        model=model, device=lay.device, context_length=lay.context, requested_context=wishes.context,
        embedding=lay.embedding, lm_head=lay.lm_head, attn_precision=lay.attn_precision,
        lm_head_precision=lay.lm_head_precision, experts_on_gpu=tuple(range(lay.offloaded, mb.layers)),
        expert_cache_slots=slots, kv_cache_bytes=mb.kv_bytes(lay.context), gpu_bytes=gpu_bytes,
        host_bytes=host_bytes, est_decode_tok_s=round(speed, 1), notes=tuple(notes), fits=refusal is None,
        refusal_reason=refusal, suggestions=(), gpu_name=s.gpu.name if s.gpu else None,
        vram_bytes=s.gpu.free_bytes if s.gpu and on_gpu else 0, ram_bytes=hw.ram_available_bytes,
        headroom_bytes=wishes.headroom_bytes if on_gpu else 0, prefill_chunk=wishes.prefill_chunk,
        workspace_bytes=s.budget.workspace, parts=tuple(parts),
    )


def _explain(mb: ModelBytes, s: _Search, wishes: Wishes) -> list[str]:
    """One sentence per decision a user should know about."""
    lay, notes, n = s.layout, [], s.layout.offloaded
    on_gpu = lay.device != "cpu"
    if not on_gpu:
        why = ("no usable NVIDIA GPU" if s.gpu is None else
               f"{_gb(s.gpu.free_bytes)} of VRAM cannot hold even the attention weights, KV cache and workspace "
               f"next to {_gb(wishes.headroom_bytes)} of headroom")
        notes.append(f"{why}: everything runs on the CPU from system RAM, which is slow")
    if on_gpu and lay.embedding == "cpu" and mb.embedding:
        notes.append(f"token embedding ({_gb(mb.embedding)}) in system RAM: one row is read per token, "
                     f"so this costs no speed")
    if lay.attn_precision == "int8":
        what = "attention and lm_head weights" if lay.lm_head_precision == "int8" else "attention weights"
        notes.append(f"{what} in int8 (a bf16 scale per row) to fit VRAM; --no-quantize keeps bf16")
    if on_gpu and n:
        per_token = mb.routed_bytes(slice(n))
        bw = wishes.bandwidths
        rate = (f"measured on this machine {bw.measured}" if bw.measured else
                "assumed; `gptoss bench` measures this machine")
        notes.append(f"experts of layers 0-{n - 1} ({n} of {mb.layers}, {_gb(sum(mb.experts[:n]))}) stay in "
                     f"system RAM, as llama.cpp --n-cpu-moe {n} keeps them on the CPU; here the GPU reads each "
                     f"token's {round(mb.active_experts * mb.num_experts)} routed experts of those layers across "
                     f"PCIe ({per_token / 1e6:.0f} MB a token at ~{bw.pcie_gb_s * IN_PLACE_FRACTION:.0f} GB/s, "
                     f"{rate}) "
                     + ("while the CPU computes part of each of those experts ("
                        + (f"~{bw.cpu_share_gb_s:.0f} GB/s as last timed here" if bw.cpu_share_gb_s else
                           "timed at the first load; the estimate leaves it out until then")
                        + "); together they bound decode speed (GPTOSS_CPU_EXPERTS=0 leaves it all to the GPU)"
                        if bw.cpu_share else
                        "alone (GPTOSS_CPU_EXPERTS=0), which bounds decode speed"))
    if on_gpu and lay.lm_head == "cpu":
        notes.append("lm_head in system RAM and computed on the CPU: the last step before running CPU-only")
    if wishes.context is not None:
        if on_gpu and n:
            notes.append(f"the {wishes.context}-token context you asked for is kept by moving experts to RAM")
    elif lay.context < s.target:
        if lay.context >= s.comfortable or (on_gpu and not n):
            why = "the full KV cache does not fit next to the weights"
        elif not on_gpu:
            why = "system RAM is full"
        elif lay.lm_head == "cpu" or n == mb.layers:
            why = "VRAM is full even with every expert in RAM"
        else:
            why = "system RAM cannot take more experts"
        notes.append(f"context reduced from {s.target} to {lay.context} tokens: {why}; --context N asks for "
                     f"more{' (offloading more experts)' if on_gpu else ''}")
    return notes


# ---- refusals -----------------------------------------------------------------------------------

def _fits(config: GptOssConfig, mb: ModelBytes, hw: Hardware, wishes: Wishes) -> bool:
    return _search(config, mb, hw, wishes).layout is not None


def _refusal(config: GptOssConfig, mb: ModelBytes, hw: Hardware, wishes: Wishes, s: _Search,
             compact: _Layout) -> str:
    max_ctx = config.max_position_embeddings
    if wishes.context is not None and wishes.context > max_ctx:
        return f"the model supports at most {max_ctx} tokens of context, you asked for {wishes.context}"
    gpu_bytes, host_bytes = s.budget.usage(compact)
    need = gpu_bytes + host_bytes + (wishes.headroom_bytes if s.gpu else 0)
    have = (s.gpu.free_bytes if s.gpu else 0) + hw.ram_available_bytes
    message = f"needs {_gb(need)} of RAM+VRAM, you have {_gb(have)}"
    if need <= have and s.gpu:
        ram = _min_size(lambda r: _fits(config, mb, replace(hw, ram_available_bytes=r), wishes))
        if ram:
            message += (f", but with {_gb(s.gpu.free_bytes)} of VRAM it needs {_gb(ram, up=True)} of system RAM "
                        f"and {_gb(hw.ram_available_bytes)} is available")
    return message


def _suggestions(config: GptOssConfig, mb: ModelBytes, hw: Hardware, wishes: Wishes) -> tuple[str, ...]:
    """Options that would make the plan fit, each checked by planning again."""
    def fits(h: Hardware = hw, w: Wishes = wishes) -> bool:
        return _fits(config, mb, h, w)

    out = []
    if wishes.context is not None:
        ctx = _max_context_that_fits(lambda c: fits(w=replace(wishes, context=c)),
                                     min(wishes.context, config.max_position_embeddings))
        if ctx:
            out.append(f"--context {ctx} (the largest context that fits)")
    if not wishes.quantize and fits(w=replace(wishes, quantize=True)):
        out.append("allow int8 attention/lm_head weights (leave out --no-quantize)")
    gpu, _ = _usable_gpu(hw)
    ram = _min_size(lambda r: fits(h=replace(hw, ram_available_bytes=r)))
    if ram:
        where = f"next to {_gb(gpu.free_bytes)} of VRAM" if gpu else "without a GPU"
        out.append(f"{_gb(ram, up=True)} of available system RAM {where}")
    vram = _min_size(lambda v: fits(h=replace(hw, gpus=(_what_if(gpu, v),))), hi=1024 * GiB)
    if vram and (gpu is None or vram > gpu.free_bytes):
        out.append(f"a GPU with {_gb(vram, up=True)} of free VRAM next to {_gb(hw.ram_available_bytes)} of RAM")
    return tuple(out)


def _what_if(gpu: Gpu | None, vram: int) -> Gpu:
    return replace(gpu, total_bytes=vram, free_bytes=vram) if gpu else Gpu(0, "what-if GPU", None, vram, vram)


def _min_size(fits: Callable[[int], bool], hi: int = 4096 * GiB, step: int = GiB // 4) -> int | None:
    """Smallest multiple of ``step`` up to ``hi`` for which ``fits`` holds (fitting grows with size)."""
    if not fits(hi):
        return None
    lo, top = 0, hi // step
    while lo < top:
        mid = (lo + top) // 2
        if fits(mid * step):
            top = mid
        else:
            lo = mid + 1
    return top * step


def _max_context_that_fits(fits: Callable[[int], bool], hi: int) -> int | None:
    """Largest multiple of CONTEXT_STEP up to ``hi`` for which ``fits`` holds."""
    if hi < CONTEXT_STEP or not fits(CONTEXT_STEP):
        return None
    lo, top = 1, hi // CONTEXT_STEP
    while lo < top:
        mid = (lo + top + 1) // 2
        if fits(mid * CONTEXT_STEP):
            lo = mid
        else:
            top = mid - 1
    return lo * CONTEXT_STEP


def _gb(n: int, up: bool = False) -> str:
    """Bytes as GB (binary, like --vram/--ram); ``up`` rounds up to a whole GB."""
    return f"{-(-n // GiB)} GB" if up else f"{n / GiB:.1f} GB"


def _layers_label(what: str, start: int, stop: int) -> str:
    return f"{what}, layers {start}-{stop - 1}" if stop - start > 1 else f"{what}, layer {start}"


# ---- resolving a model reference ----------------------------------------------------------------

def resolve_model(ref: str) -> tuple[str, GptOssConfig, dict[str, int], list[str]]:
    """(name, config, tensor sizes, notes) for an official model name or a local model directory."""
    path = Path(ref).expanduser()
    if path.is_dir():
        config = GptOssConfig.from_file(path)
        sizes = checkpoint_sizes(path)
        if sizes is not None:
            return path.name, config, sizes, []
        sizes = tensor_sizes(config)
        notes = ["sizes computed from config.json (no weights downloaded yet)"]
        total = index_total_size(path)
        if total is not None and total != sum(sizes.values()):
            notes.append(f"the index says {total} bytes, the config implies {sum(sizes.values())}: "
                         f"the checkpoint is not in the hub layout gptoss expects")
        return path.name, config, sizes, notes
    name = ref.lower().removeprefix("openai/")
    if name in OFFICIAL_MODELS:
        config = official_config(name)
        return name, config, tensor_sizes(config), []
    raise ModelNotFoundError(f"no model {ref!r}: not an official model name nor a local model directory",
                             hint=f"use one of {', '.join(OFFICIAL_MODELS)} or the path of a downloaded model")


def plan_for(model_ref: str, hardware: Hardware, wishes: Wishes = Wishes()) -> Plan:
    """The plan for a model name or directory on ``hardware``: what every command should call. Unless the
    wishes give bandwidths, the ones this machine measured for its GPU (speeds.py) feed the estimate."""
    name, config, sizes, notes = resolve_model(model_ref)
    if wishes.bandwidths == Bandwidths():
        wishes = replace(wishes, bandwidths=remembered_bandwidths(hardware))
    wishes = replace(wishes, bandwidths=_with_cpu_share_setting(wishes.bandwidths))
    plan = make_plan(config, sizes, hardware, wishes, model=name)
    if not plan.fits and name == "gpt-oss-120b":
        small = official_config("gpt-oss-20b")
        if make_plan(small, tensor_sizes(small), hardware, wishes).fits:
            plan = replace(plan, suggestions=(*plan.suggestions, "gpt-oss-20b, which fits this machine"))
    return replace(plan, notes=(*notes, *plan.notes)) if notes else plan


def remembered_bandwidths(hardware: Hardware) -> Bandwidths:
    """Bandwidths from what this machine measured for the GPU a plan would use (``gptoss bench``, or the first
    load with experts in RAM); the defaults where nothing was measured. A measured copy rate is discounted by
    GPU_EFFICIENCY as a datasheet one is: decode does not stream at copy speed."""
    gpu, _ = _usable_gpu(hardware)
    got = speeds.recall(gpu.name if gpu else None)
    if got is None:
        return Bandwidths()
    bw = Bandwidths()
    if got.gpu_copy_gb_s:
        bw = replace(bw, gpu_gb_s=got.gpu_copy_gb_s * GPU_EFFICIENCY)
    if got.h2d_gb_s:
        bw = replace(bw, pcie_gb_s=got.h2d_gb_s, measured=got.date)
    if got.cpu_share_gb_s:
        bw = replace(bw, cpu_share_gb_s=got.cpu_share_gb_s)
    return bw


def _with_cpu_share_setting(bw: Bandwidths) -> Bandwidths:
    """``bw`` as GPTOSS_CPU_EXPERTS=0 would run it: no CPU share, so no CPU rate in the estimate."""
    from .settings import cpu_experts_setting  # here: the planner stays importable without platformdirs

    fraction, _ = cpu_experts_setting()
    return replace(bw, cpu_share=False, cpu_share_gb_s=0.0) if fraction == 0 else bw
