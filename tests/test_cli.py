"""The command line, through click's test runner."""

from __future__ import annotations

from click.testing import CliRunner

from nucdata.cli import main
from nucdata.testing import install


def test_list_and_info(home):
    runner = CliRunner()
    result = runner.invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    assert "monuseg" in result.output and "tnbc" in result.output
    result = runner.invoke(main, ["info", "monuseg"])
    assert result.exit_code == 0, result.output
    for text in ("CC-BY-NC-SA-4.0", "25d3d3185bb2970b", "third-party", "MoNuSegTestData.zip",
                 str(home / "manual"), "@article", "bonus", "0.25"):
        assert text in result.output, text


def test_unknown_dataset_is_a_clean_error(home):
    result = CliRunner().invoke(main, ["info", "consepp"])
    assert result.exit_code == 2
    assert "unknown dataset 'consepp'" in result.output and "Traceback" not in result.output


def test_misspelt_names_get_a_did_you_mean(home):
    for args, suggestion in ((["info", "monuseq"], "did you mean 'monuseg'?"),
                             (["cite", "methods"], "did you mean 'method'?"),
                             (["label-sets", "pannuk"], "did you mean 'pannuke'?"),
                             (["donwload", "tnbc"], "Did you mean 'download'?")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and suggestion in result.output, (args, result.output)
    result = CliRunner().invoke(main, ["label-sets", "pannuke", "--mapping", "monusak"])
    assert "did you mean 'monusac'?" in result.output
    datasets, _, tables = result.output.partition("; or a label set's class ids: ")
    assert "set:" not in datasets and "set:consep4" in tables  # the set: tables are not listed as datasets
    result = CliRunner().invoke(main, ["info", "xyzzy"])
    assert "did you mean" not in result.output  # nothing close: no guess


def test_download_without_names_is_a_usage_error(home):
    result = CliRunner().invoke(main, ["download"])
    assert result.exit_code == 2 and "--all" in result.output and "nucdata list" in result.output
    result = CliRunner().invoke(main, ["download", "tnbc", "--all"])
    assert result.exit_code == 2 and "not both" in result.output


def test_an_unknown_split_says_how_to_take_every_image(home):
    install("tnbc", home)
    assert CliRunner().invoke(main, ["prepare", "tnbc", "--quiet"]).exit_code == 0
    result = CliRunner().invoke(main, ["stats", "tnbc", "--split", "al"])
    assert result.exit_code == 2 and "did you mean 'all'?" in result.output
    assert "no --split" in result.output and "None for every image" not in result.output


def test_download_prepare_verify(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    runner = CliRunner()
    result = runner.invoke(main, ["download", "tnbc"])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    result = runner.invoke(main, ["prepare", "tnbc", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("tnbc/1")
    result = runner.invoke(main, ["verify", "tnbc"])
    assert result.exit_code == 0, result.output
    assert "store complete (50 images" in result.output


def test_demo_runs_offline(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "summary:" in result.output
    for name in ("monuseg", "kumar", "tnbc"):
        assert name in result.output


def test_demo_archives_are_reproducible(tmp_path):
    """Same seed, same bytes: Kumar and MoNuSeg share one training archive in the demo."""
    import hashlib

    from nucdata.testing.world import World

    install("kumar", tmp_path / "a", 0, world=World(0))
    install("monuseg", tmp_path / "b", 0, world=World(0))
    name = "MoNuSeg 2018 Training Data.zip"
    digests = {hashlib.sha256((tmp_path / h / "manual" / name).read_bytes()).hexdigest() for h in "ab"}
    assert len(digests) == 1


def test_ctrl_c_says_a_rerun_carries_on(home, monkeypatch):
    import nucdata.catalog

    def interrupted(*names, root=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(nucdata.catalog, "cite", interrupted)
    result = CliRunner().invoke(main, ["cite", "tnbc"])
    assert result.exit_code == 130 and "run the same command again" in result.output
    assert "Traceback" not in result.output


def test_list_tells_demo_stores_from_real_ones(home):
    install("tnbc", home)
    assert CliRunner().invoke(main, ["prepare", "tnbc", "--quiet"]).exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in CliRunner().invoke(main, ["list"]).output.splitlines()[1:]}
    assert rows["tnbc"] == "demo" and rows["consep"] == "-"
    # preparing again keeps the demo store, and says so with the command that converts the real files
    again = CliRunner().invoke(main, ["prepare", "tnbc", "--quiet"])
    assert again.exit_code == 0 and "demo archives" in again.output and "nucdata prepare tnbc --force" in again.output


def test_the_demo_lists_what_was_dropped_without_zeros(home):
    from nucdata.testing import run_demo

    lines: list[str] = []
    run_demo(datasets=["nucls"], echo=lines.append)
    [line] = [x for x in lines if "dropped" in x]
    assert "dropped: nothing; kept and counted: boxes without mask" in line, line
    assert " 0" not in line and "_" not in line.partition("images;")[2]


def test_a_wrong_archive_in_manual_is_named_with_what_it_holds(home):
    import zipfile

    (home / "manual").mkdir()
    archive = home / "manual" / "TNBC_NucleiSegmentation.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("stuff/readme.txt", "not the dataset")
    result = CliRunner().invoke(main, ["prepare", "tnbc", "--no-hash-check", "--quiet"])
    assert result.exit_code == 2, result.output
    assert str(archive) in result.output and "it holds: stuff/" in result.output
    assert str(home / "work") not in result.output and "nucdata info tnbc" in result.output
