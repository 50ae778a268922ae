"""The demo's numbers are pinned: its first request, run by today's code, gives the accuracies and the weights (their
fingerprint) that the code gave before the engine was re-housed around requests (issue 23: no change in behaviour).
Measured with one thread, as here; a change that moves them is a change of behaviour, to be made on purpose and
recorded in the CHANGELOG with the new values."""

import pytest

import forgetkit as fk

# forgetkit demo -o train.threads=1, request 1 (forget Bag, Ankle boot), from commit 077da3f, 2026-12-03
PINNED = {"acc_f": 0.0, "acc_r": 87.9125, "h_mean": 92.00630380261642,
          "fingerprint_before": "c77aed41199b8ea39d46a21f22481d9a5b98fb20b80223f84a895803c587239d",
          "fingerprint_after": "f233b8ef43dbaa44b1b69f41f8218a42da63bffbae2e72b18d56d28061c371ca"}


def test_the_demo_first_request_gives_the_pinned_numbers(tmp_path):
    cfg = fk.load_config("demo", ["protocol.num_requests=1", "train.threads=1", "save_model=false",
                                  f"output_dir={tmp_path / 'demo'}"])
    results = fk.run_requests(cfg, progress=False)
    request = results.requests[0]
    assert request.classes == ["Bag", "Ankle boot"] and results.pretrained["acc"] == pytest.approx(89.84)
    assert {"acc_f": request.after["acc_f"], "acc_r": request.after["acc_r"], "h_mean": request.h_mean,
            "fingerprint_before": request.fingerprint_before, "fingerprint_after": request.fingerprint_after} == PINNED
