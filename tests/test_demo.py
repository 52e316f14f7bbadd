from pdeseg.experiments.demo import run_demo


def test_demo_runs_end_to_end_and_writes_results(tmp_path):
    report = run_demo(tmp_path / "demo", epochs=1, cases=4, shape=(48, 48, 24))
    table = report["table"].read_text()
    for row in ("| untrained unet |", "| unet |", "| pde_unet |"):
        assert row in table
    for fig in report["figures"]:
        assert fig.is_file() and fig.stat().st_size > 10_000
