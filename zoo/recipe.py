"""Recipes: the declarative description of a model, validated by pydantic at load time.

A recipe is YAML read with a restricted ``yaml.SafeLoader`` (no tags, no code; see :func:`parse_yaml`).
Before anything is validated, the file must fit the :data:`LIMITS`: its size, its nesting, its number
of values once YAML aliases are expanded; a key written twice is an error, not a silent overwrite.
Validation then runs in two phases, both reported as one :class:`pydantic.ValidationError` titled
with the recipe's file:

1. structure -- the schema below (``extra="forbid"`` everywhere but block arguments; integers and
   booleans strict, so ``true`` is no ``1`` and ``2.0`` no ``2``);
2. blocks -- every ``{block: name, ...}`` is looked up in the registry, its kind checked against
   where it stands (item encoder, encoder layer, fusion, readout, head), its arguments validated
   against the block constructor's signature and type hints, and the block built on PyTorch's meta
   device (no memory): what its constructor rejects is reported here, and its parameters count
   against the model's budget (:attr:`Limits.max_parameters`).

Each error names the place inside the recipe (``encoder[1].parallel[0].d_state``), the line in the
file (or the override that set it), and what is allowed (``did you mean "ds_gate"?``). Errors that
come before validation (size, encoding, YAML syntax, duplicate keys, overrides) are
:class:`RecipeError`; both kinds are ``ValueError``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import inspect
import math
import os
import re
import reprlib
import threading
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, NamedTuple, Union

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from zoo.pretrained import TagSpec, check_tags
from zoo.registry import CONTEXT_ARGS, BlockRegistryError, context_kwargs, get_block, unknown_block_message

PARAMETERS_ENV = "SEQREC_ZOO_MAX_PARAMETERS"


@dataclasses.dataclass
class Limits:
    """How much a recipe may ask for; checked before anything is allocated. Change :data:`LIMITS`
    (``zoo.recipe.LIMITS.max_parameters = 2**31``) or, for the budget, set ``SEQREC_ZOO_MAX_PARAMETERS``.

    The defaults leave the bundled recipes far inside every bound (the largest is 4 KB, 132 values,
    10 levels deep, 10 blocks) while bounding what a hostile recipe can cost: about a second of
    parsing, and no allocation beyond the budget.
    """

    max_bytes: int = 128 * 1024
    """size of a recipe file or of one override value, in bytes (parsing YAML costs ~5 µs a byte)"""
    max_depth: int = 32
    """nesting of mappings and lists"""
    max_nodes: int = 10_000
    """values in the recipe, counting each use of a YAML alias as a copy (this stops alias bombs)"""
    max_blocks: int = 1024
    """blocks in the model, with ``repeat`` multiplied out (each distinct one is built once on the meta device)"""
    max_block_tensors: int = 4096
    """parameters and buffers one block may register (stops a constructor looping over ``num_layers: 10**9``)"""
    max_parameters: int | None = None
    """elements of all parameters and buffers of the model; None: ``SEQREC_ZOO_MAX_PARAMETERS``, else 2**28
    (1 GiB of float32, e.g. 4M items at d_model 64)"""

    def parameter_budget(self) -> int:
        """:attr:`max_parameters`, else the environment variable, else 2**28."""
        if self.max_parameters is not None:
            return self.max_parameters
        raw = os.environ.get(PARAMETERS_ENV, "").strip().replace("_", "")
        if not raw:
            return 2**28
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise RecipeError(f"{PARAMETERS_ENV}={raw!r}: expected a positive whole number of elements, e.g. 4000000000")
        return int(raw)


LIMITS = Limits()


class RecipeError(ValueError):
    """A recipe or an override that cannot be read or is over the :data:`LIMITS`; the message names the
    file (or override) and, where there is one, the line."""


# Scalars are strict: YAML's ``true`` is not the integer 1 and ``2.0`` is not the integer 2 (an integer is
# accepted where a float is expected); ``1e-3`` is read as a float (parse_yaml).
Int = StrictInt
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = StrictBool


class BlockSpec(BaseModel):
    """One block: ``{block: name, arg: value, ...}``, or just ``name`` when it takes no arguments."""

    model_config = ConfigDict(extra="allow")
    block: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"block": value} if isinstance(value, str) else value

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Sequential(BaseModel):
    """Layers applied one after another."""

    model_config = ConfigDict(extra="forbid")
    sequential: list[Layer] = Field(min_length=1)


class Parallel(BaseModel):
    """Branches applied to the same input, combined by a fusion block: ``fuse([f1(x), f2(x), ...])``."""

    model_config = ConfigDict(extra="forbid")
    parallel: list[Layer] = Field(min_length=1)
    fuse: BlockSpec


class Residual(BaseModel):
    """``Norm(x + Dropout(f(x)))`` (post-norm, SASRec/Mamba4Rec), or ``x + Dropout(f(Norm(x)))`` with ``norm_first``."""

    model_config = ConfigDict(extra="forbid")
    residual: Union[Layer, list[Layer]]
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["layernorm", "rmsnorm", "none"] = "layernorm"
    norm_eps: Float = Field(1e-12, gt=0.0)
    norm_first: Bool = False


class Repeat(BaseModel):
    """``times`` independent copies of ``layers`` (each copy has its own weights)."""

    model_config = ConfigDict(extra="forbid")
    repeat: Int = Field(ge=1)
    layers: list[Layer] = Field(min_length=1)


COMBINATORS = ("sequential", "parallel", "residual", "repeat")


def _layer_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<block>"
    if isinstance(value, BaseModel):
        return {BlockSpec: "<block>", Sequential: "<sequential>", Parallel: "<parallel>", Residual: "<residual>", Repeat: "<repeat>"}.get(type(value))
    if isinstance(value, dict):
        keys = [k for k in COMBINATORS if k in value]
        if "block" in value and not keys:
            return "<block>"
        if len(keys) == 1 and "block" not in value:
            return f"<{keys[0]}>"
    return None


Layer = Annotated[
    Union[
        Annotated[BlockSpec, Tag("<block>")],
        Annotated[Sequential, Tag("<sequential>")],
        Annotated[Parallel, Tag("<parallel>")],
        Annotated[Residual, Tag("<residual>")],
        Annotated[Repeat, Tag("<repeat>")],
    ],
    Discriminator(
        _layer_kind,
        custom_error_type="layer",
        custom_error_message="a layer is a block ({block: name, ...} or a name) or exactly one of "
        "sequential / parallel (+ fuse) / residual / repeat (+ layers)",
    ),
]


class TrainConfig(BaseModel):
    """Training defaults a recipe carries (the trainer and CLI may override them)."""

    model_config = ConfigDict(extra="forbid")
    objective: Literal["last", "all", "masked", "random_cut"] = "last"
    loss: Literal["ce", "sampled_softmax", "bce"] = "ce"
    num_negatives: Int = Field(100, ge=1, description="losses sampled_softmax / bce: negatives per target")
    negatives: Literal["uniform", "unseen"] = Field(
        "uniform",
        description="losses sampled_softmax / bce: how training negatives are drawn. 'uniform': uniformly from all "
        "items except the positive, with replacement; 'unseen': num_negatives distinct items, uniformly from the items "
        "outside the user's training sequence (ConvRec §4.3)",
    )
    mask_prob: Float = Field(0.2, gt=0.0, lt=1.0)
    mask_last_prob: Float = Field(
        0.1, ge=0.0, le=1.0,
        description="objective masked: share of windows that mask only their last item (BERT4Rec §3.6)",
    )
    windows: Literal["cover", "recent"] = Field(
        "cover",
        description="objectives all / masked: windows of max_len covering each whole training sequence ('cover'), "
        "or only its newest max_len items ('recent', the original SASRec)",
    )
    window_step: Int | None = Field(
        None, ge=1,
        description="objective all: a window trains only its newest window_step targets, the rest of its max_len "
        "items being history, so windows overlap and each target sees at least max_len - window_step items "
        "before it (1 = every prefix, as RecBole trains); default max_len (disjoint windows)",
    )
    window_shift: Bool = Field(
        False,
        description="objective all with windows 'cover': every epoch, each user's newest window trains a random "
        "1..window_step of the newest targets and the older windows follow back from it, so a target's place in its "
        "window (the history it is trained with) changes from epoch to epoch; False: the grid ends at the last item",
    )
    optimizer: str = "adam"
    lr: Float = Field(1e-3, gt=0.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    scheduler: str | None = None
    warmup_epochs: Int = Field(0, ge=0)
    batch_size: Int = Field(256, ge=1)
    epochs: Int = Field(200, ge=1)
    patience: Int = Field(10, ge=1, description="stop after this many epochs without a better validation metric")
    valid_every: Int = Field(
        1, ge=1,
        description="validate (and checkpoint) after every valid_every-th epoch and after the last one; the best "
        "weights are chosen among the validated epochs and patience still counts epochs",
    )
    cpu_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="training precision on a CPU when the trainer's precision is 'auto' (its default): 'bf16' trains "
        "under bf16 autocast where the CPU computes bf16 natively (AMX or AVX512-BF16) and in fp32 on other CPUs; "
        "validation and test follow eval_precision; an explicit precision (zoo train --precision) wins",
    )
    grad_clip: Float | None = Field(None, gt=0.0)
    ema_decay: Float | None = Field(
        None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights, ema = decay * ema + (1 - decay) * weights after "
        "every optimiser step (timm's ModelEmaV3; the first step copies), and validate, test and publish it instead of "
        "the raw weights; None: no average",
    )
    valid_metric: str = "ndcg@10"
    eval_batch_size: Int | None = Field(
        None, ge=1, description="examples per evaluation batch; None: zoo.evaluate's default (scores of a batch within 64 MB)")
    eval_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="validation and test evaluation under bf16 autocast ('bf16'; item scores stay fp32) or fp32")
    eval_protocol: Literal["full", "sampled"] = Field(
        "full",
        description="the ranking protocol of validation (early stopping, the best weights) and of the reported test: "
        "'full' ranks each target among all items; 'sampled' among itself and eval_negatives items drawn outside its "
        "history (seed 0), as papers that report 1 + 100 candidates do; the test is then also reported with full ranking",
    )
    eval_negatives: Int = Field(100, ge=1, description="eval_protocol sampled: the sampled items each target is ranked against")


class Recipe(BaseModel):
    """A whole model: header, dimensions, item encoder -> encoder -> readout -> head, training defaults."""

    model_config = ConfigDict(extra="forbid")
    name: str
    paper: str | None = None
    fidelity: Literal["paper", "code", "baseline", "hybrid"] = "baseline"
    description: str = ""
    deviations: list[str] = []
    d_model: Int = Field(64, ge=1)
    max_len: Int = Field(50, ge=1)
    num_items: Int | None = Field(None, ge=1)
    init: Literal["blocks", "recbole", "recbole_gru4rec"] = Field(
        "blocks",
        description="'blocks': each block's own initialisation; 'recbole': afterwards every Linear weight and "
        "Embedding ~ N(0, 0.02) and Linear biases 0, as RecBole's _init_weights does to its SASRec / BERT4Rec and "
        "the official Mamba4Rec / SIGMA code (docs/models/mamba4rec.md, 'RecBole initialisation'); "
        "'recbole_gru4rec': afterwards Embeddings Xavier-normal and the first GRU layer's weights Xavier-uniform, "
        "as RecBole's GRU4Rec does (docs/models/baselines.md, 'Initialisation')",
    )
    item_encoder: BlockSpec = BlockSpec(block="item_id")
    encoder: list[Layer] = []
    readout: BlockSpec = BlockSpec(block="last")
    head: BlockSpec = BlockSpec(block="tied_dot")
    train: TrainConfig = TrainConfig()
    pretrained: dict[str, TagSpec] = Field(
        {},
        description="published weights of this recipe, by tag: {ml-100k: {dataset, hf_hub_id, revision, default}}; "
        "zoo.create('NAME.TAG', pretrained=True) loads one (zoo.pretrained)",
    )

    @field_validator("pretrained")
    @classmethod
    def _tags(cls, tags: dict[str, TagSpec]) -> dict[str, TagSpec]:
        return check_tags(tags)


for _model in (Sequential, Parallel, Residual, Repeat, Recipe):
    _model.model_rebuild()


# ---------------------------------------------------------------- phase 2: blocks against the registry

_ARG_MODELS: dict[type, type[BaseModel]] = {}
_STRICT = {int: Int, float: StrictFloat, bool: Bool}
# the item count a block is checked with while the recipe leaves it to zoo.create(..., num_items=N)
PLACEHOLDER_ITEMS = 2**31 - 1


def _strict(hint: Any) -> Any:
    """``hint`` with every ``int``, ``float`` and ``bool`` in it strict (``int | None``, ``tuple[int, ...]``)."""
    if hint in (int, float, bool):
        return _STRICT[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None or origin is Literal or not args:
        return hint
    if origin is Annotated:
        return Annotated[(_strict(args[0]), *hint.__metadata__)]
    strict = tuple(arg if arg is Ellipsis else _strict(arg) for arg in args)
    return Union[strict] if origin in (Union, types.UnionType) else origin[strict]


def block_arguments_model(cls: type) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s arguments (minus those the builder supplies), scalars strict."""
    if cls not in _ARG_MODELS:
        hints = typing.get_type_hints(cls.__init__)
        fields: dict[str, Any] = {}
        extra = "forbid"
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or name in CONTEXT_ARGS:
                continue
            if param.kind is param.VAR_KEYWORD:
                extra = "allow"
                continue
            default = ... if param.default is param.empty else param.default
            fields[name] = (_strict(hints.get(name, Any)), default)
        _ARG_MODELS[cls] = create_model(
            f"{cls.__name__}Arguments", __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True), **fields
        )
    return _ARG_MODELS[cls]


class MeasuredBlock(NamedTuple):
    """A block built on the meta device (no storage) and the elements of its parameters and buffers."""

    block: Any
    elements: int


class _Overflow(Exception):
    """Raised from a block's constructor, through a registration hook, once the block is over a limit."""


_MEASURED: dict[tuple, MeasuredBlock] = {}


@contextlib.contextmanager
def _registration_limit(elements: float) -> Iterator[None]:
    """While a constructor runs in this thread, stop it (:class:`_Overflow`) as soon as the tensors it
    registers pass ``elements`` elements or :attr:`Limits.max_block_tensors` tensors."""
    from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

    owner, seen = threading.get_ident(), {"tensors": 0, "elements": 0}

    def count(module: Any, name: str, tensor: Any) -> None:
        if tensor is None or threading.get_ident() != owner:
            return
        seen["tensors"] += 1
        seen["elements"] += tensor.numel()
        if seen["tensors"] > LIMITS.max_block_tensors:
            raise _Overflow(f"registers more than {LIMITS.max_block_tensors:,} parameters and buffers "
                            "(zoo.recipe.LIMITS.max_block_tensors)")
        if seen["elements"] > elements:
            raise _Overflow(f"alone has more than {elements:,} parameter and buffer elements; {BUDGET_HINT}")

    handles = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure_block(cls: type, kwargs: dict[str, Any], elements: float) -> MeasuredBlock:
    """``cls(**kwargs)`` built on PyTorch's meta device, which allocates no memory, and its size (cached).

    Raises what the constructor raises, or :class:`RecipeError` as soon as the block passes ``elements``
    parameter and buffer elements (``math.inf``: no bound) or :attr:`Limits.max_block_tensors` tensors.
    """
    import torch

    key = (cls, repr(kwargs), elements, LIMITS.max_block_tensors)
    if key not in _MEASURED:
        try:
            with _registration_limit(elements), torch.device("meta"):
                block = cls(**kwargs)
        except _Overflow as exc:
            raise RecipeError(f"block {cls.block_name!r} {exc}") from None
        tensors = {id(t): t for t in (*block.parameters(), *block.buffers())}
        if len(_MEASURED) >= 512:
            del _MEASURED[next(iter(_MEASURED))]
        _MEASURED[key] = MeasuredBlock(block, sum(t.numel() for t in tensors.values()))
    return _MEASURED[key]


class _BlockChecker:
    """Phase 2 over a whole recipe: every block against the registry and its constructor's signature,
    then built on the meta device, so that its constructor's own checks run and its size counts
    against the budget, with ``repeat`` multiplied out."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.budget = LIMITS.parameter_budget()
        self.errors: list[tuple[str, str, Any]] = []
        self.blocks = 0  # blocks so far, repeats multiplied out
        self.sizes: list[tuple[str, int]] = []  # (where, elements of all its copies) of each sized block

    def run(self) -> list[tuple[str, str, Any]]:
        recipe = self.recipe
        if self._dimensions_fit():
            self.block(recipe.item_encoder, ("item-encoder",), "item_encoder", 1)
            self.layers(recipe.encoder, "encoder", 1)
            self.block(recipe.readout, ("readout",), "readout", 1)
            self.block(recipe.head, ("head",), "head", 1)
            self._check_total()
        return self.errors

    def _dimensions_fit(self) -> bool:
        for name in CONTEXT_ARGS:
            value = getattr(self.recipe, name)
            if value is not None and value > self.budget:
                self.errors.append((name, f"{name} {value:,} alone is over the limit of {self.budget:,} parameter elements; "
                                          f"{BUDGET_HINT}", value))
        return not self.errors

    def _check_total(self) -> None:
        total = sum(size for _, size in self.sizes)
        if total > self.budget:
            where, size = max(self.sizes, key=lambda pair: pair[1])
            self.errors.append((where, f"the model would have {total:,} parameter and buffer elements, over the limit of "
                                       f"{self.budget:,} ({where}: {size:,}); {BUDGET_HINT}", size))

    def block(self, spec: BlockSpec, kinds: tuple[str, ...], where: str, copies: int) -> Any:
        """Check one block that stands ``copies`` times in the model; return it built on the meta device
        (None when it has errors)."""
        cls = self._block_class(spec, kinds, where)
        if cls is None or not self._arguments_valid(cls, spec, where):
            return None
        self.blocks += copies
        if self.blocks > LIMITS.max_blocks:
            self.errors.append((where, f"the model has more than {LIMITS.max_blocks:,} blocks, repeats multiplied out "
                                       "(zoo.recipe.LIMITS.max_blocks)", self.blocks))
            return None
        recipe = self.recipe
        items = PLACEHOLDER_ITEMS if recipe.num_items is None else recipe.num_items
        facts = context_kwargs(cls, d_model=recipe.d_model, num_items=items, max_len=recipe.max_len)
        counted = recipe.num_items is not None or "num_items" not in facts  # item tables: counted when built
        try:
            measured = measure_block(cls, {**facts, **spec.args}, self.budget if counted else math.inf)
        except RecipeError as exc:
            self.errors.append((where, str(exc), spec.args))
            return None
        except Exception as exc:  # whatever the constructor refuses these arguments with
            self.errors.append((where, _refusal(spec.block, cls, exc), spec.args))
            return None
        if counted:
            self.sizes.append((where, measured.elements * copies))
        return measured.block

    def _block_class(self, spec: BlockSpec, kinds: tuple[str, ...], where: str) -> type | None:
        try:
            cls = get_block(spec.block)
        except BlockRegistryError:
            self.errors.append((f"{where}.block", unknown_block_message(spec.block, kinds[0] if len(kinds) == 1 else None), spec.block))
            return None
        if cls.kind not in kinds:
            hint = {
                "readout": "readouts go in `readout:`, after the encoder",
                "fusion": "fusions go in the `fuse:` of a `parallel` layer",
                "item-encoder": "item encoders go in `item_encoder:`",
                "head": "heads go in `head:`",
                "sequence": "sequence blocks go in `encoder:`",
            }[cls.kind]
            self.errors.append((f"{where}.block", f"block {spec.block!r} is a {cls.kind} block, expected {' or '.join(kinds)}; {hint}", spec.block))
            return None
        return cls

    def _arguments_valid(self, cls: type, spec: BlockSpec, where: str) -> bool:
        errors = self.errors
        before = len(errors)
        args = spec.args
        for name in CONTEXT_ARGS:
            if name in args:
                errors.append((f"{where}.{name}", f"{name!r} is set once for the whole model, at the top of the recipe, not per block", args[name]))
        args = {k: v for k, v in args.items() if k not in CONTEXT_ARGS}
        schema = block_arguments_model(cls)
        try:
            schema.model_validate(args)
        except ValidationError as exc:
            allowed = list(schema.model_fields)
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    msg = f"unknown argument {_shown(field)} for block {spec.block!r}{_did_you_mean(field, allowed)}(allowed: {', '.join(allowed) or 'none'})"
                elif err["type"] == "missing":
                    msg = f"block {spec.block!r} needs argument {field!r}"
                else:
                    msg = f"block {spec.block!r}: {err['msg']}"
                errors.append((f"{where}.{field}", msg, err.get("input")))
        return len(errors) == before

    def layer(self, layer: Layer, here: str, copies: int) -> None:
        if isinstance(layer, BlockSpec):
            self.block(layer, ("sequence",), here, copies)
        elif isinstance(layer, Sequential):
            self.layers(layer.sequential, f"{here}.sequential", copies)
        elif isinstance(layer, Repeat):
            if copies * layer.repeat > LIMITS.max_blocks:
                inside = f" inside repeats of {copies:,}" if copies > 1 else ""
                self.errors.append((f"{here}.repeat", f"repeat {layer.repeat:,}{inside} makes more than {LIMITS.max_blocks:,} "
                                                      "blocks (zoo.recipe.LIMITS.max_blocks)", layer.repeat))
            else:
                self.layers(layer.layers, f"{here}.layers", copies * layer.repeat)
        elif isinstance(layer, Residual):
            inner = layer.residual if isinstance(layer.residual, list) else [layer.residual]
            path = f"{here}.residual"
            for i, part in enumerate(inner):
                self.layer(part, f"{path}[{i}]" if isinstance(layer.residual, list) else path, copies)
        elif isinstance(layer, Parallel):
            self.parallel(layer, here, copies)

    def layers(self, layers: list[Layer], where: str, copies: int) -> None:
        for i, layer in enumerate(layers):
            self.layer(layer, f"{where}[{i}]", copies)

    def parallel(self, layer: Parallel, here: str, copies: int) -> None:
        """The branches, then the fusion, which must take as many streams as there are branches."""
        self.layers(layer.parallel, f"{here}.parallel", copies)
        n, where = len(layer.parallel), f"{here}.fuse"
        declared = layer.fuse.args.get("num_inputs")
        if declared is not None and declared != n:  # checked before the fusion is built with it
            self.errors.append((f"{where}.num_inputs", f"fusion {layer.fuse.block!r} is set to num_inputs {_shown(declared)}, "
                                                       f"but the parallel layer has {n} branch(es)", declared))
            return
        fuse = self.block(layer.fuse, ("fusion",), where, copies)
        if fuse is None:
            return
        low, high = getattr(fuse, "min_inputs", 2), getattr(fuse, "max_inputs", None)
        if n < low or (high is not None and n > high):
            need = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            self.errors.append((where, f"fusion {layer.fuse.block!r} combines {need} streams, but the parallel layer has {n} branch(es)", n))


def _refusal(name: str, cls: type, exc: Exception) -> str:
    """The message of a block whose constructor raised ``exc``: its own words for a ValueError (without
    the ``block_name:`` it starts with), the exception's type and words for anything else."""
    if not isinstance(exc, ValueError):
        return f"block {name!r} cannot be built with these arguments ({type(exc).__name__}: {exc})"
    text, own = str(exc), f"{cls.block_name}: "
    return f"block {name!r}: {text[len(own):] if text.startswith(own) else text}"


def check_blocks(recipe: Recipe) -> list[tuple[str, str, Any]]:
    """Phase 2: every block exists, stands where its kind belongs, gets valid arguments and fits the limits."""
    return _BlockChecker(recipe).run()


# ---------------------------------------------------------------- reading YAML within the limits

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _LoadError(Exception):
    """A recipe's YAML over a limit, or with a duplicate key, at ``mark``."""

    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags, no code) that also stops at :attr:`Limits.max_depth` levels of nesting
    and at a key written twice in one mapping, and reads ``1e-3`` as a float (YAML 1.2; 1.1 wants ``1.0e-3``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        nested = int(self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent))
        self.depth += nested
        try:
            if self.depth > LIMITS.max_depth:
                raise _LoadError(f"nested more than {LIMITS.max_depth} levels deep (zoo.recipe.LIMITS.max_depth)",
                                 self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= nested

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, Any], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    raise _LoadError(f"duplicate key {_shown(key.value)} (lines {earlier.start_mark.line + 1} and "
                                     f"{key.start_mark.line + 1}); YAML would keep only the last, so write it once", key.start_mark)
        return node


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _check_length(length: int, source: str) -> None:
    if length > LIMITS.max_bytes:
        raise RecipeError(f"{source}: larger than {LIMITS.max_bytes:,} bytes (zoo.recipe.LIMITS.max_bytes); recipes are a few KB")


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """One YAML document (a recipe, or an override's value) read within the :data:`LIMITS`: plain data
    only (no tags, no code), no key twice in a mapping, ``1e-3`` a float; returns the data and its node
    tree (for line numbers). Every problem is a :class:`RecipeError` naming ``source`` and the line."""
    _check_length(len(text), source)
    try:
        loader = _RecipeLoader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as exc:
        raise RecipeError(_clip(f"{source}: not valid YAML: {exc}")) from None
    try:
        root = loader.get_single_node()
        return (None if root is None else loader.construct_document(root)), root
    except _LoadError as exc:
        raise RecipeError(_clip(f"{source}: line {exc.mark.line + 1}: {exc.message}")) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a value Python cannot hold (int of 5000 digits, 2024-02-30)
        raise RecipeError(_clip(f"{source}: not valid YAML: {exc}")) from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> tuple[dict, yaml.Node]:
    """Read a recipe file: UTF-8, at most :attr:`Limits.max_bytes`, one YAML mapping (:func:`parse_yaml`);
    returns its data and node tree."""
    with open(path, "rb") as file:
        raw = file.read(LIMITS.max_bytes + 1)
    _check_length(len(raw), str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}: line {line}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the recipe as UTF-8") from None
    data, root = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (name:, d_model:, encoder: ...), got {type(data).__name__}")
    return data, root


def _check_shape(data: Any, source: str, root: yaml.Node | None) -> None:
    """Refuse data nested deeper than :attr:`Limits.max_depth` or holding more than :attr:`Limits.max_nodes`
    values, each use of a YAML alias counted as a copy; stops after that many values, so an alias bomb
    (or a recursive anchor) costs no more than a recipe of the largest allowed size."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    count = 0
    while stack:
        value, where = stack.pop()
        count += 1
        if count > LIMITS.max_nodes:
            raise RecipeError(f"{source}: more than {LIMITS.max_nodes:,} values, counting every use of a YAML alias as a "
                              "copy (zoo.recipe.LIMITS.max_nodes)")
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, (list, tuple)):
            children = enumerate(value)
        else:
            continue
        if len(where) >= LIMITS.max_depth:
            path = _format_loc(where)
            line = _line_of(root, path)
            raise RecipeError(f"{source}: {path}{f' (line {line})' if line else ''}: nested more than {LIMITS.max_depth} "
                              "levels deep (zoo.recipe.LIMITS.max_depth)")
        stack.extend((child, (*where, key)) for key, child in children)


# ---------------------------------------------------------------- error reporting

# how to allow a bigger model, for the messages of the budget
BUDGET_HINT = f"raise zoo.recipe.LIMITS.max_parameters or set {PARAMETERS_ENV} for a bigger model"
_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel, _PREVIEW.maxstring, _PREVIEW.maxother, _PREVIEW.maxlong = 3, 60, 60, 60
_PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxdict = _PREVIEW.maxset = 4
MAX_ERRORS = 20  # errors shown of one recipe; the rest are counted
_MODELS_BY_TAG: dict[str, type[BaseModel]] = {
    "<sequential>": Sequential, "<parallel>": Parallel, "<residual>": Residual, "<repeat>": Repeat,
}


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _shown(value: Any) -> str:
    """``repr(value)``, at most about 60 characters."""
    return _PREVIEW.repr(value)


def _preview(value: Any) -> Any:
    """What an error shows as ``input_value``: scalars themselves (pydantic shortens them), containers as
    a short repr, so no error message grows with the input."""
    return value if value is None or isinstance(value, (str, int, float)) else _PREVIEW.repr(value)


def _did_you_mean(name: str, allowed: list[str]) -> str:
    """``"; did you mean 'x'? "`` for the closest of ``allowed``, else a space; then comes ``(allowed: ...)``."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5) if len(name) <= 100 else []
    return f"; did you mean {close[0]!r}? " if close else " "


def _allowed_keys(parent: tuple) -> list[str]:
    """The keys the schema allows in the mapping at pydantic location ``parent``."""
    if parent and parent[-1] in _MODELS_BY_TAG:
        return list(_MODELS_BY_TAG[parent[-1]].model_fields)
    if parent == ("train",):
        return list(TrainConfig.model_fields)
    if len(parent) == 2 and parent[0] == "pretrained":
        return list(TagSpec.model_fields)
    return list(Recipe.model_fields) if not parent else []


def _structure_errors(exc: ValidationError) -> list[tuple[str, str, Any]]:
    """Phase 1's errors as ``(where, message, input)``; an unknown key gets a did-you-mean."""
    errors = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            key, allowed = str(err["loc"][-1]), _allowed_keys(err["loc"][:-1])
            msg = f"unknown key {_shown(key)}{_did_you_mean(key, allowed)}(allowed: {', '.join(allowed)})" if allowed else msg
        errors.append((_format_loc(err["loc"]), msg, err.get("input")))
    return errors


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _path_parts(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in path.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def _line_of(node: yaml.Node | None, path: str) -> int | None:
    """1-based line of the deepest YAML node on ``path`` (None without a source file)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in _path_parts(path):
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _override_of(where: str, overrides: typing.Iterable[str]) -> str | None:
    """The override that set ``where`` or a value around or inside it, if any."""
    target = _path_parts(where)
    for path in overrides:
        parts = _path_parts(path)
        shared = min(len(parts), len(target))
        if shared and parts[:shared] == target[:shared]:
            return path
    return None


def _place(where: str, root: yaml.Node | None, overrides: typing.Iterable[str]) -> str:
    """`` (override 'a.b')`` when an override set the value, else `` (line N)`` of the file, else nothing."""
    override = _override_of(where, overrides)
    if override is not None:
        return f" (override {override!r})"
    line = _line_of(root, where)
    return f" (line {line})" if line else ""


def _detail(where: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("recipe", "{message}", {"message": message}), loc=(where,), input=_preview(value))


def _raise(title: str, errors: list[tuple[str, str, Any]], root: yaml.Node | None,
           overrides: typing.Iterable[str] = ()) -> typing.NoReturn:
    """Raise ``errors`` as one ValidationError titled ``title``: each placed, clipped, and at most
    :data:`MAX_ERRORS` of them (then a count of the rest)."""
    overrides = list(overrides)
    details = [_detail(where, _clip(msg) + _place(where, root, overrides), value) for where, msg, value in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        details.append(_detail("...", f"and {len(errors) - MAX_ERRORS} more errors", None))
    raise ValidationError.from_exception_data(title, details)


# ---------------------------------------------------------------- validating, overriding, loading


def validate_recipe(
    data: Any, source: str = "recipe", root: yaml.Node | None = None, overrides: typing.Iterable[str] = ()
) -> Recipe:
    """Validate a recipe mapping (size, structure, then blocks); errors are titled with ``source`` and
    point at lines of ``root`` or at the ``overrides`` (dotted paths) that set the value."""
    _check_shape(data, source, root)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise(source, _structure_errors(exc), root, overrides)
    return checked(recipe, source, root, overrides)


def checked(recipe: Recipe, source: str = "recipe", root: yaml.Node | None = None,
            overrides: typing.Iterable[str] = ()) -> Recipe:
    """``recipe`` after phase 2 (blocks against the registry and the limits); a recipe built in code needs it too."""
    errors = check_blocks(recipe)
    if errors:
        _raise(source, errors, root, overrides)
    return recipe


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of recipe ``data`` with dotted-path overrides applied: ``{"encoder.0.d_state": 64}``.

    String values are parsed as YAML scalars/flow collections (``"64"`` -> 64, ``"[1, 2]"`` -> list,
    ``"1e-3"`` -> 0.001; :func:`parse_yaml`), so CLI ``--set key=value`` and Python keyword overrides
    behave alike. A bad path or value raises :class:`RecipeError` naming the override.
    """
    result = copy.deepcopy(data)
    for path, value in overrides.items():
        if isinstance(value, str) and value.strip():
            value = parse_yaml(value, f"override {path!r} (value {_shown(value)})")[0]
        parts = _path_parts(path)
        if not parts:
            raise RecipeError(f"override {path!r}: empty path")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(str(p) for p in parts[: depth + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise RecipeError(f"override {path!r}: {here!r} is not an index of a {len(node)}-item list")
                node = node[part]
            elif isinstance(node, dict):
                if isinstance(node.get(part), str):
                    node[part] = {"block": node[part]}
                node = node.setdefault(part, {})
            else:
                raise RecipeError(f"override {path!r}: {here!r} is a value, not a mapping or list")
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise RecipeError(f"override {path!r}: {last!r} is not an index of a {len(node)}-item list")
        elif not isinstance(node, dict):
            raise RecipeError(f"override {path!r}: its parent is a value, not a mapping or list")
        node[last] = value
    return result


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate the recipe file at ``path``."""
    path = Path(path)
    data, root = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_recipe(data, source=str(path), root=root, overrides=list(overrides or ()))
