"""The training-depth command-line flags reach the settings."""
import pytest

from core.cli import _settings_from, build_parser


def test_depth_flags_reach_the_settings():
    args = build_parser().parse_args([
        "train", "--base", "b", "--data", "d", "--output", "o.safetensors",
        "--optimizer", "adafactor", "--scheduler", "cosine_with_restarts", "--warmup", "0.1", "--lr-cycles", "2",
        "--min-snr-gamma", "5", "--noise-offset", "0.05", "--loss", "huber", "--prediction", "v",
        "--targets", "kohya+conv", "--conv-rank", "8", "--conv-alpha", "4", "--te-rank", "2", "--te-lr", "5e-5", "--dora",
        "--init-lora", "x.safetensors", "--keep-last", "3", "--sample-every", "10",
        "--sample-prompt", "a cat", "--sample-prompt", "a dog", "--max-bad-steps", "2",
    ])
    lora_settings, settings = _settings_from(args, "o")
    assert (settings.optimizer, settings.lr_scheduler, settings.warmup_steps, settings.lr_cycles) == ("adafactor", "cosine_with_restarts", 0.1, 2)
    assert (settings.min_snr_gamma, settings.noise_offset, settings.loss, settings.prediction) == (5.0, 0.05, "huber", "v")
    assert (settings.keep_last, settings.sample_every, settings.sample_prompts, settings.max_bad_steps) == (3, 10, ("a cat", "a dog"), 2)
    assert settings.text_encoder_learning_rate == 5e-5
    assert (lora_settings.targets, lora_settings.conv_rank, lora_settings.conv_alpha, lora_settings.use_dora) == ("kohya+conv", 8, 4.0, True)
    assert lora_settings.train_text_encoder and lora_settings.text_encoder_rank == 2
    assert args.init_lora == "x.safetensors"
    settings.validate()
    lora_settings.validate()


def test_missing_optional_optimizer_ends_with_one_sentence(tmp_path, capsys, monkeypatch):
    import json

    from core import cli, optim

    monkeypatch.setattr(optim, "optimizer_available", lambda name: name not in ("adamw8bit",))
    code = cli.main(["demo", "--workdir", str(tmp_path), "--steps", "1", "--optimizer", "adamw8bit"])
    captured = capsys.readouterr()
    assert code == 2
    assert "needs the bitsandbytes package" in json.loads(captured.out.strip().splitlines()[-1])["error"]
    assert "Traceback" not in captured.err


LYCORIS_KEYS = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
                "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}}


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_lycoris_adapters_from_the_command_line_save_lycoris_keys(tmp_path, capsys, adapter):
    import json

    from core import cli
    from core.lora import read_lora_file

    code = cli.main(["demo", "--workdir", str(tmp_path), "--steps", "2", "--adapter", adapter, "--rank", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, result
    tensors = read_lora_file(result["lora_path"]).tensors
    assert tensors and {key.rsplit(".", 1)[1] for key in tensors} <= LYCORIS_KEYS[adapter]
    assert any(key.endswith(".alpha") for key in tensors) and not any("lora_down" in key for key in tensors)
    code = cli.main(["demo", "--workdir", str(tmp_path / "refused"), "--steps", "2", "--adapter", adapter, "--dora"])
    assert code == 2 and "cannot be combined with Lo" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
