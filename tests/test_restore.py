"""Restore requests: undo gives forgotten classes back from the ledger's edits, exactly for the latest request."""


import pytest

import forgetkit as fk
from forgetkit.cli import main
from forgetkit.requests import RunRecord

COMMON = ["-q", "--allow-fail", "-o", "train.steps=24", "-o", "train.threads=1", "-o", "protocol.retain_ratio=0.5",
          "-o", "method.bnd=5", "-o", "method.alpha=0.01", "-o", "method.alpha_warmup_steps=4"]


@pytest.fixture
def two_requests(tiny_model_dir, tmp_path):
    """class_0 then class_1 forgotten (two GS-LoRA requests) from the tiny model."""
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_0", "--out", str(tmp_path / "m1"),
                 *COMMON]) == 0
    assert main(["forget", "--model", str(tmp_path / "m1"), "--classes", "class_1", "--out", str(tmp_path / "m2"),
                 *COMMON]) == 0
    return tmp_path


def test_undoing_the_latest_request_gives_the_model_before_it_bit_for_bit(two_requests, capsys):
    root = two_requests
    assert main(["restore", "--model", str(root / "m2"), "--classes", "class_1", "--out", str(root / "r"), "-q"]) == 0
    ledger, manifest = fk.read_ledger(root / "r")
    assert manifest["fingerprint"] == fk.read_ledger(root / "m1")[1]["fingerprint"]
    assert [(e["kind"], e["classes"]) for e in ledger] == [("forget", ["class_0"]), ("forget", ["class_1"]),
                                                           ("restore", ["class_1"])]
    request = RunRecord.read(root / "r").requests[0]
    assert request.stats["exact_undo_of_requests"] == [2] and request.passed
    assert request.after["acc_restored"] > request.before["acc_restored"] + 30
    assert request.after["acc_o"] <= 5                       # class_0 stays forgotten
    assert fk.fingerprint(fk.replay_ledger(root / "r")) == manifest["fingerprint"]  # the restore replays too
    # forget -> restore -> forget again
    assert main(["forget", "--model", str(root / "r"), "--classes", "class_1", "--out", str(root / "again"),
                 *COMMON]) == 0
    assert [e["kind"] for e in fk.read_ledger(root / "again")[0]] == ["forget", "forget", "restore", "forget"]


def test_undoing_an_earlier_lora_request_subtracts_its_update(two_requests):
    root = two_requests
    assert main(["restore", "--model", str(root / "m2"), "--classes", "class_0", "--out", str(root / "r"), "-q",
                 "--allow-fail"]) == 0
    request = RunRecord.read(root / "r").requests[0]
    assert request.stats["exact_undo_of_requests"] == []     # approximate: request 2 was trained on top of it
    assert request.after["acc_restored"] > request.before["acc_restored"] + 30
    assert request.old_classes == ["class_1"]
    assert "gap_to_base" in request.details and "pass" in request.verdict


def test_restore_refusals_are_one_line_and_write_nothing(two_requests, capsys):
    root = two_requests
    for classes, message in (("class_3", "'class_3' is not forgotten in this model's ledger"),
                             ("class_9", "unknown class 'class_9'")):
        assert main(["restore", "--model", str(root / "m2"), "--classes", classes, "--out", str(root / "x"),
                     "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (root / "x").exists()
    # a missing edit file (the replay up to request 2 needs request 1's adapter) is named, and nothing is written
    (root / "m2" / "model" / "edits" / "request_000" / "adapter_model.safetensors").unlink()
    assert main(["restore", "--model", str(root / "m2"), "--classes", "class_1", "--out", str(root / "x"), "-q"]) == 2
    assert "adapter_model.safetensors" in capsys.readouterr().err
    assert not (root / "x" / "results.json").exists()
    adapter = root / "m2" / "model" / "edits" / "request_000" / "adapter_model.safetensors"
    adapter.write_bytes(b"not a safetensors file")
    assert main(["restore", "--model", str(root / "m2"), "--classes", "class_1", "--out", str(root / "y"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and err.count("\n") == 1


def test_lirf_withdrawal_builds_the_recover_net_from_the_stored_deposit(tiny_model_dir, tmp_path, capsys):
    # a lower half of one block: the later GS-LoRA request below edits the other block, the deposit's upper half
    lirf = ["--method", "lirf_eccv", "-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.threads=1",
            "-o", "method.split=1"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_2", "--out", str(tmp_path / "t"),
                 *lirf]) == 0
    assert (tmp_path / "t" / "model" / "edits" / "request_000" / "deposit.json").is_file()
    assert main(["restore", "--model", str(tmp_path / "t"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "r"), "-q", "--allow-fail"]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "r")
    assert manifest["format"] == "forgetkit-recovered" and manifest["deposits"][0]["classes"] == [2]
    assert [(e["kind"], e["method"], e["edit"]["type"]) for e in ledger] == [
        ("forget", "lirf_eccv", "weights"), ("restore", "withdraw", "withdrawal")]
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "r")) == manifest["fingerprint"]
    request = RunRecord.read(tmp_path / "r").requests[0]
    assert request.trainable_params == 0 and "pass" in request.verdict
    # no deposit, or a deposit whose target later requests changed: refused with one line, nothing written
    common = ["-q", "-o", "train.steps=4", "-o", "train.threads=1"]
    assert main(["forget", "--model", str(tmp_path / "t"), "--classes", "class_3", "--out", str(tmp_path / "t2"),
                 "--allow-fail", *common]) == 0
    capsys.readouterr()
    assert main(["restore", "--model", str(tmp_path / "t2"), "--classes", "class_3", "--method", "withdraw",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "left no deposit to withdraw" in capsys.readouterr().err
    assert main(["restore", "--model", str(tmp_path / "t2"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "y"), "-q"]) == 2
    assert "belongs to the target network" in capsys.readouterr().err
    assert not (tmp_path / "y" / "results.json").exists()
    # a corrupted or missing deposit file: one line naming it, exit 2, nothing written
    deposit = tmp_path / "t" / "model" / "edits" / "request_000" / "deposit.safetensors"
    deposit.write_bytes(b"not a safetensors file")
    assert main(["restore", "--model", str(tmp_path / "t"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "z"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "deposit.safetensors" in err and err.count("\n") == 1 and not (tmp_path / "z" / "results.json").exists()
    deposit.unlink()
    assert main(["restore", "--model", str(tmp_path / "t"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "z"), "-q"]) == 2
    assert "lacks deposit.safetensors" in capsys.readouterr().err


def test_successive_lirf_deposits_are_each_withdrawable_on_their_own(tiny_model_dir, tmp_path):
    """Two LIRF requests: the second changes only the target's lower half, so the first deposit still withdraws,
    and then the second; each withdrawal gives back its own classes only."""
    lirf = ["--method", "lirf_eccv", "-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.threads=1"]
    withdraw = ["--method", "withdraw", "-q", "--allow-fail"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_2", "--out", str(tmp_path / "t1"),
                 *lirf]) == 0
    assert main(["forget", "--model", str(tmp_path / "t1"), "--classes", "class_3", "--out", str(tmp_path / "t2"),
                 *lirf]) == 0
    assert main(["restore", "--model", str(tmp_path / "t2"), "--classes", "class_2", "--out", str(tmp_path / "r1"),
                 *withdraw]) == 0
    first = RunRecord.read(tmp_path / "r1").requests[0]
    assert first.classes == ["class_2"] and first.old_classes == ["class_3"]
    assert main(["restore", "--model", str(tmp_path / "r1"), "--classes", "class_3", "--out", str(tmp_path / "r2"),
                 *withdraw]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "r2")
    assert [d["classes"] for d in manifest["deposits"]] == [[2], [3]]
    assert [(e["kind"], e["classes"]) for e in ledger] == [
        ("forget", ["class_2"]), ("forget", ["class_3"]), ("restore", ["class_2"]), ("restore", ["class_3"])]
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "r2")) == manifest["fingerprint"]
    # the first withdrawal took class_2's logits from its own deposit only; class_3's stayed the target's
    assert [d["classes"] for d in fk.read_ledger(tmp_path / "r1")[1]["deposits"]] == [[2]]


def test_a_deposit_of_every_block_still_withdraws_after_a_later_gs_lora_request(tiny_model_dir, tmp_path):
    """lirf_eccv's default lower half is every block, so a later GS-LoRA request (LoRA on the blocks' FFNs) leaves
    the deposit's upper half (final norm, head) alone: the deposit still withdraws, giving its classes' logits
    from the deposit path and the other classes' from the GS-LoRA model."""
    common = ["-q", "--allow-fail", "-o", "train.steps=12", "-o", "train.threads=1"]
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_2", "--out", str(tmp_path / "t1"),
                 "--method", "lirf_eccv", *common]) == 0
    assert main(["forget", "--model", str(tmp_path / "t1"), "--classes", "class_3", "--out", str(tmp_path / "t2"),
                 *common]) == 0
    assert main(["restore", "--model", str(tmp_path / "t2"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "r"), "-q", "--allow-fail"]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "r")
    assert [(e["kind"], e["method"]) for e in ledger] == [
        ("forget", "lirf_eccv"), ("forget", "gs_lora"), ("restore", "withdraw")]
    recovered = fk.replay_ledger(tmp_path / "r")
    assert fk.fingerprint(recovered) == manifest["fingerprint"]
    target = fk.load_model(tmp_path / "t2")[0]
    assert fk.fingerprint(recovered.target) == fk.fingerprint(target)   # the other classes: the GS-LoRA model's


def test_a_withdrawn_deposit_can_be_forgotten_again_and_withdrawn_again(tiny_model_dir, tmp_path, capsys):
    """forget (LIRF) -> withdraw -> forget again (redeposit: the recover net without the deposit, which is the
    target bit for bit) -> withdraw again (the first recover net, bit for bit); every step replays."""
    steps = ["-q", "-o", "train.steps=12", "-o", "train.threads=1"]
    # 12 steps do not forget: exit 3, with advice for this method (not GS-LoRA's), and the model saved
    assert main(["forget", "--model", str(tiny_model_dir), "--classes", "class_2", "--out", str(tmp_path / "t"),
                 "--method", "lirf_eccv", *steps]) == 3
    assert "LIRF's ECCV form forgets only as far as its α lets it" in capsys.readouterr().err
    assert main(["restore", "--model", str(tmp_path / "t"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "r"), "-q", "--allow-fail"]) == 0
    capsys.readouterr()
    # the recover net has no LoRA targets: the default method is refused with a hint at redeposit, nothing written
    assert main(["forget", "--model", str(tmp_path / "r"), "--classes", "class_2", "--out", str(tmp_path / "x"),
                 *steps]) == 2
    err = capsys.readouterr().err
    assert "--method redeposit" in err and err.count("\n") == 1 and not (tmp_path / "x" / "results.json").exists()
    assert main(["forget", "--model", str(tmp_path / "r"), "--classes", "class_2,class_3", "--method", "redeposit",
                 "--out", str(tmp_path / "x"), "-q", "--allow-fail"]) == 2
    assert "ask for exactly the classes of one of them" in capsys.readouterr().err
    assert main(["forget", "--model", str(tmp_path / "r"), "--classes", "class_2", "--method", "redeposit",
                 "--out", str(tmp_path / "again"), "-q"]) == 3          # the target had not forgotten class_2
    assert "only as far as the LIRF request's target had forgotten them" in capsys.readouterr().err
    ledger, manifest = fk.read_ledger(tmp_path / "again")
    assert manifest["fingerprint"] == fk.read_ledger(tmp_path / "t")[1]["fingerprint"]   # the target again
    assert [(e["kind"], e["method"]) for e in ledger] == [
        ("forget", "lirf_eccv"), ("restore", "withdraw"), ("forget", "redeposit")]
    request = RunRecord.read(tmp_path / "again").requests[0]
    assert request.trainable_params == 0 and request.after["acc_f"] < request.before["acc_f"]
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "again")) == manifest["fingerprint"]
    assert main(["restore", "--model", str(tmp_path / "again"), "--classes", "class_2", "--method", "withdraw",
                 "--out", str(tmp_path / "r2"), "-q", "--allow-fail"]) == 0
    ledger, manifest = fk.read_ledger(tmp_path / "r2")
    assert manifest["fingerprint"] == fk.read_ledger(tmp_path / "r")[1]["fingerprint"]   # the recover net again
    assert fk.fingerprint(fk.replay_ledger(tmp_path / "r2")) == manifest["fingerprint"]
