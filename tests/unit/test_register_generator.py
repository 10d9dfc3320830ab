"""bench/register.py: the generated register is deterministic, valid, realistic and streamed."""

from __future__ import annotations

import datetime
import itertools
import json
import tracemalloc
from collections import Counter
from pathlib import Path

from lxml import etree

from bench import register
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.rules import Institution, check_deletion, check_registration
from services.registrar.store import EventStore

TODAY = datetime.date(2026, 12, 1)  # the day after register.LAST_DATE
XSD = Path(__file__).resolve().parents[2] / "schemas" / "xml" / "aanlevering.xsd"


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows() -> None:
    first = list(itertools.islice(register.results(20_000, seed=7), 3_000))
    assert first == list(itertools.islice(register.results(20_000, seed=7), 3_000))
    assert first != list(itertools.islice(register.results(20_000, seed=8), 3_000))
    assert list(register.deletions(20_000, seed=7)) == list(register.deletions(20_000, seed=7))
    assert register.institutions(7) == register.institutions(7)


def test_a_sample_passes_every_rule_of_the_register() -> None:
    catalogue = Catalogue.load(None)
    known = {
        i.code: Institution(i.code, i.name, frozenset(i.sectors), i.funded) for i in register.institutions(3)
    }
    rows = list(itertools.islice(register.results(100_000, seed=3), 0, None, 20))  # 5,000, every year
    assert len(rows) == 5_000
    problems: Counter[str] = Counter()
    keys = set()
    for row in rows:
        checked = check_registration(row, acting_institution=row["institution"], institutions=known.get,
                                     catalogue=catalogue, today=TODAY)
        problems.update(p.code for p in checked.errors)
        keys.add((row["institution"], row["bsn"] or row["onderwijsnummer"], row["diploma_number"]))
    assert not problems
    assert len(keys) == len(rows)  # no two results share an identity: no RESULT_CONFLICT
    for deletion in itertools.islice(register.deletions(100_000, seed=3), 500):
        assert check_deletion(deletion["reason"], deletion["explanation"]) == []


def test_the_mix_is_roughly_the_real_one() -> None:
    report = register.stats(100_000, seed=1)
    share = {k: v / 100_000 for k, v in report["sector"].items()}
    assert 0.33 < share["VO"] < 0.41 and 0.27 < share["MBO"] < 0.35 and 0.25 < share["HO"] < 0.33
    assert 0.002 < share["PRO"] < 0.008 and 0.002 < share["VSO"] < 0.008
    assert sorted(report["year"]) == [str(y) for y in range(2012, 2027)]
    summer = sum(report["month"][m] for m in ("06", "07", "08"))
    assert summer / 100_000 > 0.6
    deleted = sum(report["deletions"].values())
    assert 700 < deleted < 1_300
    assert set(report["deletions"]) == set(register.DELETION_MIX)
    assert 0.005 < report["person_number"]["onderwijsnummer"] / 100_000 < 0.03
    sizes = report["results_per_institution"]
    assert sizes["p99"] > 20 * max(sizes["p50"], 1)  # very different sizes
    assert 0.01 < report["big_profession"] / 100_000 < 0.08  # a few percent go to CIBG
    assert len(register.institutions(1)) == register.INSTITUTION_COUNT


def test_pro_and_vso_only_from_2023() -> None:
    for row in register.results(50_000, seed=2):
        if row["sector"] in ("PRO", "VSO"):
            assert row["diploma_date"] >= "2023-01-01"  # type: ignore[operator]
            assert row["provider"]


def test_memory_does_not_grow_with_the_number_of_results() -> None:
    def peak(n: int) -> int:
        rows = register.results(n, seed=5)
        tracemalloc.start()
        next(rows)  # the lookup tables and the first year's plan: built once, whatever n is
        tracemalloc.reset_peak()
        for _ in rows:
            pass
        _current, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(5_000), peak(30_000)  # tracemalloc slows generation ~10x
    assert large < small * 1.2 + 100_000, (small, large)


def test_the_written_files_import_into_the_registrar(tmp_path: Path) -> None:
    assert max(batch.total for batch in register.plan(800, seed=4)) > 1
    manifest = register.write_files(tmp_path / "register", 800, seed=4, chunk=1)
    assert Path(tmp_path / "register" / "manifest.json").is_file()
    assert json.loads((tmp_path / "register" / "manifest.json").read_text())["results"] == 800
    assert max(entry["records"] for entry in manifest["files"]) == 1  # big batches in parts
    assert any(Path(entry["path"]).stem.endswith("-02") for entry in manifest["files"])
    store = EventStore(f"sqlite:///{tmp_path / 'registrar.db'}")
    registrar = Registrar(store, Catalogue.load(None), today=lambda: TODAY)
    delivering = {entry["institution"] for entry in manifest["files"]}
    for inst in (i for i in manifest["institutions"] if i["code"] in delivering):
        registrar.add_institution(inst["code"], inst["name"], inst["sectors"], inst["funded"])
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    accepted = Counter[str]()
    formats = set()
    for entry in manifest["files"]:
        if entry["format"] == "xml":
            schema.assertValid(etree.parse(str(tmp_path / "register" / entry["path"])))
        summary = registrar.import_file(tmp_path / "register" / entry["path"], entry["institution"])
        assert summary.rejected == 0 and summary.duplicate == 0, entry
        assert summary.accepted == entry["records"]
        accepted[entry["action"]] += summary.accepted
        formats.add(entry["format"])
    assert accepted["register"] == 800
    assert accepted["delete"] == manifest["deletions"] > 0
    assert formats == {"csv", "xml"}  # MBO colleges deliver XML
