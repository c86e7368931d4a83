"""Generate speech with the EchoForge model layer, as in the original EchoForge model package.

    python examples/csm_model_example.py                              # sesame/csm-1b from the Hub or HF cache
    python examples/csm_model_example.py --model-path ./csm-1b        # a local checkpoint directory
    python examples/csm_model_example.py --placeholder -o tone.wav    # no weights: the placeholder tone

Without weights (and with ECHOFORGE_ALLOW_PLACEHOLDER left at true) it falls back to the placeholder and says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.models import CSMModelError, create_csm_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="local CSM checkpoint directory (default: ECHOFORGE_MODEL_PATH / hub)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: auto)")
    parser.add_argument("--placeholder", action="store_true", help="use the placeholder tone generator")
    parser.add_argument("--text", default="Hello from EchoForge. This is the Conversational Speech Model speaking.")
    parser.add_argument("--speaker", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("-o", "--output", default="output.wav", help=".wav or .flac")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        model = create_csm_model(model_path=args.model_path, device=args.device, use_placeholder=args.placeholder)
    except CSMModelError as e:
        print(f"could not load the model: {e}", file=sys.stderr)
        return 1
    print(f"model: {model.describe()}")
    audio, sample_rate = model.generate_speech(args.text, speaker_id=args.speaker, temperature=args.temperature,
                                               top_k=args.top_k)
    path = model.save_audio(audio, sample_rate, args.output)
    print(f"wrote {path}: {len(audio) / sample_rate:.2f} s at {sample_rate} Hz")
    model.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
