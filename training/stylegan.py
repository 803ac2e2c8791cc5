"""Train the layer-wise latent generator (StyleGAN2 recipe, sized for a CPU) on the scene world.

Non-saturating logistic loss, lazy R1 penalty on reals every `r1_every` steps, style mixing
(two w's split at a random layer), a running average of w for truncation, and an EMA generator
(the one that is shipped). Batch `step` always holds the same scenes and the same noise, so a
resumed run replays exactly. No path-length regulariser: it costs a second backward per step
and matters little at 64 px.

`--classes`: class-conditional training on the data's classes, with G(z) still a function of z alone
(z's first coordinate picks the class; see StyleGenerator) and a projection discriminator. Trained
unconditionally on the scene world, G drops the classes it finds hard (city streets, night cities);
with a conditional D each class must appear in its share of z.

Speed on this CPU (AVX-512 BF16): `--bf16` runs G's and D's convolutions under bf16 autocast and
`--channels-last` stores activations NHWC; the losses, the R1 penalty, the optimisers and the EMA stay in
fp32. `semgen bench stylegan` measures images/s of one training step per setting.

On a CUDA GPU (`--device cuda`), `--data-workers N` renders the next batches in N processes while
the step runs, `--max-minutes M` ends a run (state saved) within a machine's time slot, and
`--pack-to DIR` writes G, its EMA and D in bf16, each file small enough to carry back from such a
machine; `--warm-start DIR` goes on from such a pack at its step. `training/gpu_stylegan.sh` is
the whole call.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.data.loaders import make_source, to_uint8
from semgen.networks.stylegan import StyleDiscriminator, StyleGenerator
from semgen.options import opt
from semgen.reports import image_grid
from training.common import Progress, load_state, save_state, setup_torch, write_options
from training.prefetch import batches
from training.pyramid import ema_update

PACK_PARTS = ("G", "G_ema", "D")  # what a pack carries (optimisers start fresh from it)


@dataclass
class StyleGANOptions:
    out: str = opt("artifacts/stylegan", "EMA generator checkpoint that serving loads")
    run_dir: str = opt("runs/stylegan", "resumable state, options, log")
    data: str = opt("scenes", "'scenes' or an image folder")
    image_size: int = opt(64, "image size in pixels")
    g_channels: str = opt("128,128,128,64,32", "synthesis channels at 4, 8, ... image_size px")
    d_channels: str = opt("32,64,128,128,128", "discriminator channels at image_size ... 4 px")
    z_dim: int = opt(128, "z dimension")
    w_dim: int = opt(128, "w dimension")
    steps: int = opt(6000, "training steps")
    batch_size: int = opt(16, "images per step")
    lr: float = opt(0.002, "learning rate")
    r1_gamma: float = opt(0.1, "R1 penalty weight")
    r1_every: int = opt(16, "steps between lazy R1 penalties")
    mixing_prob: float = opt(0.9, "style-mixing probability")
    ema_half_life_images: int = opt(10_000, "EMA half-life in images")
    w_avg_beta: float = opt(0.995, "decay of the tracked mean w (truncation centre)")
    save_every: int = opt(100, "steps between resumable saves")
    sample_every: int = opt(250, "steps between sample pictures")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")
    bf16: bool = opt(False, "bf16 autocast for G's and D's forward and backward (losses, R1, EMA in fp32)")
    channels_last: bool = opt(False, "NHWC activations (faster CPU convolutions)")
    classes: bool = opt(True, "class-conditional training (every class of the data gets an equal share of z)")
    warm_start: str = opt("", "used only when the run has no state yet: a generator checkpoint of the same "
                              "configuration to start G and its EMA from, with a fresh D; or another run's "
                              "folder (its state.pt) to take G, its EMA and D from, optimisers fresh "
                              "(an unconditional run may start a --classes one: class embeddings start at 0); "
                              "or a --pack-to folder, which also gives the step to go on from")
    device: str = opt("cpu", "where to train: cpu, cuda or cuda:N (--bf16 autocasts there too)")
    d_warmup: int = opt(0, "steps at the start of a run that train only D (lets a fresh D catch up with a warm G)")
    data_workers: int = opt(0, "processes rendering the next batches while a step runs (0: in the loop)")
    max_minutes: float = opt(0.0, "end the run after this many minutes of steps, state saved (0: no limit); "
                                  "the same command again resumes")
    pack_to: str = opt("", "at the end, also write G, its EMA and D as bf16 files with the step to this "
                           "folder: a warm start to carry the run to another machine")


def _ints(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{field}: give comma-separated integers, got {text!r}") from None


def mixed_ws(G: StyleGenerator, batch: int, prob: float, gen: torch.Generator):
    """w+ for a batch: with probability `prob` a sample switches to a second w from a random layer on."""
    device = G.const.device  # drawn on the CPU from `gen`, so a seed gives the same latents anywhere
    z = torch.randn(2, batch, G.z_dim, generator=gen).to(device)
    if G.num_classes:
        z[1, :, 0] = z[0, :, 0]  # the second w keeps the sample's class
    w1, w2 = G.mapping_w(z[0]), G.mapping_w(z[1])
    ws = G.broadcast(w1).clone()
    cut = torch.randint(1, G.num_ws, (batch,), generator=gen).to(device)
    mix = (torch.rand(batch, generator=gen) < prob).to(device)
    later = (torch.arange(G.num_ws, device=device)[None, :] >= cut[:, None]) & mix[:, None]  # [B, num_ws]
    labels = G.class_of(z[0]) if G.num_classes else None
    return torch.where(later[:, :, None], w2[:, None, :], ws), w1, labels


def r1_penalty(D, real, labels=None):
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(real, labels).sum(), real, create_graph=True)
    return grad.pow(2).sum((1, 2, 3)).mean()


@torch.no_grad()
def write_samples(path: Path, G: StyleGenerator, n: int = 32):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0)).to(G.const.device)
    rows = [to_uint8(G(z[i: i + 8])) for i in range(0, n, 8)]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid([list(r) for r in rows]).save(path)


@dataclass
class GANStep:
    """One StyleGAN2 training step's parts and settings (what `train_step` needs)."""

    G: StyleGenerator
    D: StyleDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    mixing_prob: float = 0.9
    r1_gamma: float = 0.1
    r1_every: int = 16
    w_avg_beta: float = 0.995
    bf16: bool = False
    channels_last: bool = False
    device: torch.device = torch.device("cpu")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_step(opt: StyleGANOptions, num_classes: int = 0) -> GANStep:
    """num_classes: the data's, when opt.classes (0: unconditional)."""
    num_classes = num_classes if opt.classes else 0
    G = StyleGenerator(image_size=opt.image_size, z_dim=opt.z_dim, w_dim=opt.w_dim,
                       channels=_ints(opt.g_channels, "g_channels"), num_classes=num_classes)
    D = StyleDiscriminator(image_size=opt.image_size, channels=_ints(opt.d_channels, "d_channels"),
                           num_classes=num_classes)
    device = training_device(opt.device)
    G, D = G.to(device), D.to(device)
    if opt.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=opt.lr, betas=(0.0, 0.99))
    c = opt.r1_every / (opt.r1_every + 1)  # lazy regularisation: rescale D's Adam settings
    opt_d = torch.optim.Adam(D.parameters(), lr=opt.lr * c, betas=(0.0, 0.99**c))
    return GANStep(G, D, opt_g, opt_d, opt.mixing_prob, opt.r1_gamma, opt.r1_every, opt.w_avg_beta, opt.bf16,
                   opt.channels_last, device)


def training_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device; give cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {name!r}; give cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but torch sees no CUDA GPU here")
    return device


def train_step(s: GANStep, real: torch.Tensor, real_labels: torch.Tensor, step: int,
               gen: torch.Generator, train_g: bool = True) -> dict[str, float]:
    """G (unless not train_g) then D on one batch of reals; returns the losses (and R1 on its steps)."""
    G, D = s.G, s.D
    real = s.layout(real.to(s.device, non_blocking=True))
    real_labels = real_labels.to(s.device) if D.num_classes else None
    # generator: non-saturating loss
    ws, w1, fake_labels = mixed_ws(G, len(real), s.mixing_prob, gen)
    D.requires_grad_(False)  # D's weight gradients would be thrown away here
    with s.autocast():
        fake = G.synthesis(ws, noise_mode="random")
        fake_logits = D(fake, fake_labels)
    g_loss = F.softplus(-fake_logits.float()).mean()
    if train_g:
        s.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        s.opt_g.step()
    D.requires_grad_(True)
    with torch.no_grad():
        G.w_avg.lerp_(w1.mean(0), 1 - s.w_avg_beta)

    # discriminator: logistic loss, plus lazy R1 on reals (in fp32)
    with s.autocast():
        logits_fake, logits_real = D(fake.detach(), fake_labels), D(real, real_labels)
    d_loss = F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()
    numbers = {"g": g_loss.item(), "d": d_loss.item()}
    if step % s.r1_every == 0:
        r1 = r1_penalty(D, real, real_labels)
        d_loss = d_loss + r1 * (s.r1_gamma / 2) * s.r1_every
        numbers["r1"] = r1.item()
    s.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    s.opt_d.step()
    return numbers


def train_stylegan(opt: StyleGANOptions) -> Path:
    run_dir, out = Path(opt.run_dir), Path(opt.out)
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    source = make_source(opt.data, opt.image_size)
    s = build_step(opt, len(source.class_names))
    G_ema = copy.deepcopy(s.G).eval().requires_grad_(False)
    start = load_state(run_dir, G=s.G, D=s.D, G_ema=G_ema, opt_g=s.opt_g, opt_d=s.opt_d)
    if start == 0 and opt.warm_start:
        start = warm_start(opt.warm_start, s, G_ema)
    progress = Progress(run_dir, opt.steps, start, "stylegan")
    ema_beta = 0.5 ** (opt.batch_size / opt.ema_half_life_images)
    stream = batches(source, start, opt.steps, opt.batch_size, opt.data_workers)
    began, done = time.monotonic(), start
    try:
        for step, real, labels in stream:
            gen = torch.Generator().manual_seed(opt.seed * 1_000_003 + step)
            torch.manual_seed(opt.seed * 1_000_003 + step)  # layer noise uses the global generator
            numbers = train_step(s, real, labels, step, gen, train_g=step >= opt.d_warmup)
            ema_update(G_ema, s.G, min(ema_beta, (1 + step) / (10 + step)))
            progress.update(step + 1, **numbers)
            done = step + 1
            out_of_time = opt.max_minutes > 0 and time.monotonic() - began > 60 * opt.max_minutes
            if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps or out_of_time:
                save_state(run_dir, step + 1, G=s.G, D=s.D, G_ema=G_ema, opt_g=s.opt_g, opt_d=s.opt_d)
                save_checkpoint(out, G_ema, G_ema.config, step=step + 1, training={"data": opt.data})
            if (step + 1) % opt.sample_every == 0:
                write_samples(run_dir / "samples" / f"{step + 1:06d}.png", G_ema)
            if out_of_time and step + 1 < opt.steps:
                print(f"stylegan: stopped after {opt.max_minutes:g} min at step {step + 1} of {opt.steps}, "
                      "state saved; the same command resumes", flush=True)
                break
    finally:
        stream.close()
        progress.close()
    if opt.pack_to:  # the weights just saved with state.pt, at that step
        pack_run(Path(opt.pack_to), done, G=s.G, G_ema=G_ema, D=s.D)
    return out


def pack_run(dest: Path, step: int, **parts: torch.nn.Module) -> None:
    """The PACK_PARTS modules as bf16 safetensors (each under 16 MiB for up to 8 M parameters), and
    warm.json with the step: `--warm-start dest` goes on from there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PACK_PARTS:
        tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in parts[name].state_dict().items()}
        save_file(tensors, str(dest / f"{name}.safetensors"))
    (dest / "warm.json").write_text(json.dumps({"step": step, "parts": list(PACK_PARTS)}))


def warm_start(path: str, s: GANStep, G_ema: StyleGenerator) -> int:
    """G and its EMA (and D, from a run folder or a pack) from `path`; see StyleGANOptions.warm_start.
    Returns the step to begin at: a pack's, else 0."""
    run, pack, step = Path(path) / "state.pt", Path(path) / "warm.json", 0
    if pack.exists():  # written by pack_run: the same run, carried from another machine
        state = {name: load_file(str(Path(path) / f"{name}.safetensors")) for name in PACK_PARTS}
        parts = {"G": s.G, "G_ema": G_ema, "D": s.D}
        step = int(json.loads(pack.read_text())["step"])
    elif run.exists():
        state = torch.load(run, map_location="cpu", weights_only=True)
        parts = {"G": s.G, "G_ema": G_ema, "D": s.D}
    else:  # the shipped EMA weights: G and its EMA begin there, D is fresh
        weights = load_checkpoint(path).state_dict()
        state, parts = {"G": weights, "G_ema": weights}, {"G": s.G, "G_ema": G_ema}
    for name, module in parts.items():
        try:
            missing, unexpected = module.load_state_dict(state[name], strict=False)
        except RuntimeError as err:  # a tensor of another shape
            raise ValueError(f"warm_start: {path} does not fit this run's {name}: {err}") from None
        if unexpected or set(missing) - {"class_embed"}:
            raise ValueError(f"warm_start: {path} does not fit this run's {name} ({s.G.config}): "
                             f"missing {missing}, unexpected {unexpected}")
    return step
