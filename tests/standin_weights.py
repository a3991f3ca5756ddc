"""Stand-in weight files: random-initialised networks in the layout of the real ones.

Nothing here may reach a model hub, yet LPIPS, DISTS, FID and KID need their backbones. A stand-in
has the architecture, key names and shapes of the real file (so the metrics load and run it as they
would the real one, at the same cost) and random values (so its numbers mean nothing). Tests use
them to check plumbing and agreement with reference packages; benchmarks/metric_cost.py to measure
cost. They are registered under their own names (``standin-…``) through a site registry file, never
under the canonical names, so they cannot pass for the real weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

#: Canonical weights name -> (torchvision architecture, or "inception"; keep only the ``features`` part).
STANDINS = {
    "torchvision-alexnet": ("alexnet", True),
    "torchvision-vgg16": ("vgg16", True),
    "torchvision-squeezenet1_1": ("squeezenet1_1", False),
    "inception-v3-fid": ("inception", False),
}


def _random_inception_state() -> dict:
    """torch-fidelity's InceptionV3 with its random initialisation (its constructor would download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class Unloaded(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *args, **kwargs: {}
    try:
        return Unloaded("inception-v3-compat", ["2048"]).state_dict()
    finally:
        tfi.load_state_dict_from_url = original


def write_standins(folder: Path, names=tuple(STANDINS), *, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """Write stand-ins of ``names`` and a site registry (YAML) describing them into ``folder``.

    Returns (registry file, {canonical name: stand-in name}). Point ``$ULBC_WEIGHTS_REGISTRY`` at the
    registry and ``ulbc weights import`` the ``*.pth`` files, then give the metrics
    ``weights: <stand-in name>``.
    """
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    entries, mapping = [], {}
    for name in names:
        architecture, features_only = STANDINS[name]
        torch.manual_seed(seed)
        if architecture == "inception":
            state = _random_inception_state()
        else:
            state = getattr(torchvision.models, architecture)(weights=None).state_dict()
        if features_only:  # the part LPIPS and DISTS read; whole, AlexNet and VGG16 are 233 and 528 MB
            state = {key: value for key, value in state.items() if key.startswith("features.")}
        standin = f"standin-{name}"
        path = folder / f"{standin}.pth"
        torch.save(state, path)
        entries.append({"name": standin, "file_name": path.name,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size,
                        "licence": "test (random values)", "used_by": ["tests", "benchmarks"],
                        "description": f"random-initialised stand-in for {name}: right layout, meaningless values"})
        mapping[name] = standin
    registry = folder / "standin-registry.yaml"
    registry.write_text(yaml.safe_dump(entries, sort_keys=False))
    return registry, mapping


#: Channels of the CompressAI stand-ins: the zoo's architectures at a few channels (the zoo's are
#: 128-320), so that a test codes an image in milliseconds.
COMPRESSAI_STANDIN_CHANNELS = {"N": 8, "M": 12}


def compressai_standin_state(architecture: str, *, seed: int = 0) -> dict:
    """A random-initialised CompressAI model in the zoo's file layout: its state dict with the
    entropy coders' CDF tables computed (``update()``), as the published files hold them."""
    import torch

    from ulbc.compressai_runtime import _model_class

    torch.manual_seed(seed)
    cls = _model_class(architecture)
    n, m = COMPRESSAI_STANDIN_CHANNELS["N"], COMPRESSAI_STANDIN_CHANNELS["M"]
    net = cls(n) if architecture.startswith("cheng2020") else cls(n, m)
    net.update(force=True)
    return net.state_dict()


def write_compressai_standins(folder: Path, architecture: str, qualities) -> tuple[str, list[dict]]:
    """Stand-ins of ``architecture`` at each quality (seeded by it), as
    ``{folder}/{architecture}-q{quality}.pth.tar``. Returns (the codec's ``checkpoint:`` pattern,
    site-registry entries naming them ``standin-compressai-{architecture}-q{quality}``)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for quality in qualities:
        path = folder / f"{architecture}-q{quality}.pth.tar"
        if not path.is_file():
            torch.save(compressai_standin_state(architecture, seed=quality), path)
        entries.append({"name": f"standin-compressai-{architecture}-q{quality}", "file_name": path.name,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size,
                        "licence": "test (random values)", "used_by": ["tests"],
                        "description": f"random-initialised stand-in for CompressAI {architecture}: zoo layout, "
                                       f"{COMPRESSAI_STANDIN_CHANNELS} channels, meaningless values"})
    return str(folder / f"{architecture}-q{{quality}}.pth.tar"), entries


def write_adapter_standins(folder: Path, architecture: str, qualities, *, width: int = 8,
                           perturb: bool = True) -> str:
    """Dynamic adapters (width ``width``) in ``ulbc train adapter``'s checkpoint layout, one per
    quality, each recording the sha256 of the stand-in codec of that quality (made here too) as the
    codec it was trained for; ``perturb``: random output layers, so that x̄ differs from x̂. Returns
    the codec's ``adapter:`` pattern ``{folder}/adapter-{architecture}-q{quality}.pt``."""
    import torch

    from ulbc.adapter import network

    _, entries = write_compressai_standins(folder, architecture, qualities)
    for quality, entry in zip(qualities, entries):
        path = folder / f"adapter-{architecture}-q{quality}.pt"
        if path.is_file():
            continue
        torch.manual_seed(100 + quality)
        adapter = network.DynamicAdapter(3, width)
        if perturb:
            with torch.no_grad():
                adapter.tail.weight.normal_(0, 0.02)
        header = network.make_header(adapter={"channels": 3, "width": width},
                                     base={"architecture": architecture, "quality": quality,
                                           "weights": entry["name"], "sha256": entry["sha256"]},
                                     task={"architecture": "stand-in"}, training={"finetune_codec": False},
                                     steps_done=0)
        network.save_checkpoint(path, network.checkpoint_content(header, adapter))
    return str(folder / f"adapter-{architecture}-q{{quality}}.pt")


def write_glc_standin(path: Path, *, seed: int = 0, config: str = "glc-tiny") -> Path:
    """A random GLC checkpoint in the release layout (``{"state_dict": ...}``), its four rate points
    made distinct: ``q_enc`` scales y up with the rate index and ``q_dec`` back down, so a higher
    index codes more bits, as in the trained model."""
    import torch

    from ulbc.glc.config import get_config
    from ulbc.glc.model import GLCImage

    torch.manual_seed(seed)
    model = GLCImage(get_config(config))
    with torch.no_grad():
        for rate in range(model.cfg.n_rates):
            model.q_enc[rate].fill_(0.5 * 2.0**rate)
            model.q_dec[rate].fill_(1.0 / (0.5 * 2.0**rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def _entry(path: Path, name: str, description: str) -> dict:
    return {"name": name, "file_name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size, "licence": "test (random values)", "used_by": ["misc"],
            "description": description}


def write_diffusion_standins(folder: Path, *, seed: int = 0) -> list[dict]:
    """Random networks of MISC's ``tiny`` diffusion configuration, one safetensors file per component
    (diffusers' layout), and their site-registry entries under the names the configuration gives."""
    import torch
    from safetensors.torch import save_file

    from ulbc.misc.diffusion import COMPONENTS, CONFIGS, build

    config = CONFIGS["tiny"]
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, component in enumerate(COMPONENTS):
        torch.manual_seed(seed + index)
        state = {key: value.contiguous() for key, value in build(config, component).state_dict().items()}
        name = config.weights[component]
        path = folder / f"{name}.safetensors"
        save_file(state, str(path))
        entries.append(_entry(path, name, f"random {component} of MISC's tiny diffusion configuration"))
    return entries


def write_clip_standin(folder: Path, *, seed: int = 0, name: str = "standin-clip-vit-b-16") -> dict:
    """A random CLIP ViT in OpenAI's state-dict layout (a 64-pixel input, 16-pixel patches, width 64)
    and its site-registry entry."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(32, CLIPVisionCfg(layers=3, width=64, patch_size=16, image_size=64),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2), quick_gelu=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return _entry(path, name, "random CLIP ViT (3 blocks, width 64) in OpenAI's layout")


#: The answer the tiny vision-language model of :func:`write_vlm_standin` is taught (its words are
#: its vocabulary's; the tokenizer splits on spaces, the decoder joins with them).
VLM_ANSWER = "w4 , w5 , w6 . \n w7 w8 . \n w9 w10 . \n w11 w12 . \n w13 w14 w15 ."


def write_vlm_standin(folder: Path, *, prompt: str, image, teach: bool = True, steps: int = 150) -> Path:
    """A zipped transformers model folder of a tiny LLaVA (1-layer CLIP vision tower, 1-layer Llama),
    with a word-level tokenizer and a chat template; ``teach``: trained until greedy decoding of
    ``prompt`` about ``image`` gives :data:`VLM_ANSWER`. Returns the archive."""
    import shutil
    import tempfile

    import torch
    from PIL import Image
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", ".", ",", "\n",
             *(f"w{i}" for i in range(40))]
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=fast, chat_template=template, patch_size=16,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, image_size=32, patch_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                                bos_token_id=2, eos_token_id=3, pad_token_id=1),
        image_token_index=vocab["<image>"], vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if teach:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True),
                           images=[Image.fromarray(image)], return_tensors="pt")
        target = torch.tensor([[vocab[word] for word in VLM_ANSWER.split(" ")] + [vocab["</s>"]]])
        ids = torch.cat([inputs["input_ids"], target], 1)
        labels = torch.cat([torch.full_like(inputs["input_ids"], -100), target], 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                         labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(work) / "tiny-llava"
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        archive = shutil.make_archive(str(folder / ("tiny-llava" if teach else "tiny-llava-untaught")), "zip",
                                      work, "tiny-llava")
    return Path(archive)
