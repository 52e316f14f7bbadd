from pdeseg.experiments.demo import run_demo
from pdeseg.viz.report import referenced_files


def test_demo_runs_end_to_end_and_writes_report(tmp_path):
    report = run_demo(tmp_path / "demo", epochs=1, cases=4, shape=(48, 48, 24))
    table = report["table"].read_text()
    assert "| unet |" in table and "| pde_unet |" in table
    assert "pde_unet vs unet:" in report["comparison"].read_text()
    assert 0.0 <= report["untrained"]["dice_mean"] <= 1.0
    refs = referenced_files(report["report"])
    assert refs and all(p.is_file() and p.stat().st_size > 5_000 for p in refs)
