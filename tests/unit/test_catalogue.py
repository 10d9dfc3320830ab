"""The programme catalogue: the shipped default, lookups, and refusing malformed files."""

from __future__ import annotations

import csv
import re
from importlib import resources
from pathlib import Path

import pytest

from services.registrar.catalogue import Catalogue, Programme

HEADER = "code,name,sector,kind,recognised,big_profession"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.csv"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped default ------------------------------------------------------------------


@pytest.fixture(scope="module")
def default() -> Catalogue:
    return Catalogue.load(None)


def test_default_catalogue_has_b_geneeskunde_with_big_profession_arts(default: Catalogue) -> None:
    programme = default.find("HO", "56551")
    assert programme == Programme(
        code="56551",
        name="B Geneeskunde",
        sector="HO",
        kind="diploma",
        recognised=True,
        big_profession="arts",
    )


def test_default_catalogue_has_the_pro_and_vso_names(default: Catalogue) -> None:
    assert default.find("PRO", "Praktijkonderwijs") is not None
    assert default.find("VSO", "Dagbesteding") is not None
    assert default.find("VSO", "Arbeidsmarkt") is not None
    assert default.find("PRO", "Dagbesteding") is None


def test_default_catalogue_has_the_praktijkonderwijs_elementcode(default: Catalogue) -> None:
    programme = default.find("VO", "0090")
    assert programme is not None and programme.name == "Praktijkonderwijs"


def test_default_catalogue_has_big_and_non_big_programmes_in_mbo_and_ho(default: Catalogue) -> None:
    professions = {(p.sector, p.big_profession) for p in default}
    assert ("MBO", "verpleegkundige") in professions
    assert ("MBO", None) in professions
    assert ("HO", None) in professions
    assert {"arts", "verpleegkundige", "tandarts", "apotheker"} <= {p.big_profession for p in default}


def test_every_default_row_is_well_formed_and_names_its_source() -> None:
    text = resources.files("services.registrar").joinpath("catalogue.csv").read_text("utf-8-sig")
    rows = list(csv.DictReader(text.splitlines()))
    assert rows
    formats = {"VO": r"\d{4}", "MBO": r"\d{5}", "HO": r"\d{5}"}
    for row in rows:
        assert row["source"].strip(), row["code"]
        if row["sector"] in formats:
            assert re.fullmatch(formats[row["sector"]], row["code"]), row["code"]
        # The shipped default holds real diplomas only; tests build their own module rows.
        assert row["kind"] == "diploma" and row["recognised"] == "true"


def test_default_load_also_accepts_the_path_of_the_packaged_file(default: Catalogue) -> None:
    path = Path(__file__).resolve().parents[2] / "services" / "registrar" / "catalogue.csv"
    assert len(Catalogue.load(path)) == len(default)
    assert len(Catalogue.load(str(path))) == len(default)


# --- lookups --------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Catalogue:
    return Catalogue.load(
        write(
            tmp_path,
            f"{HEADER},source\n"
            "56551,B Geneeskunde,HO,diploma,true,arts,test\n"
            "99001,Test module,HO,module,true,,test\n"
            "99002,Test unrecognised,HO,diploma,false,,test\n"
            "Praktijkonderwijs,Praktijkonderwijs,PRO,diploma,true,,test\n"
            "0090,Praktijkonderwijs,VO,diploma,true,,test\n",
        )
    )


def test_find_compares_codes_without_case_and_keeps_the_catalogue_spelling(small: Catalogue) -> None:
    programme = small.find("PRO", "PRAKTIJKONDERWIJS")
    assert programme is not None and programme.code == "Praktijkonderwijs"


def test_find_is_per_sector(small: Catalogue) -> None:
    assert small.find("HO", "56551") is not None
    assert small.find("MBO", "56551") is None
    assert small.find("HO", "56552") is None


def test_module_and_unrecognised_rows_are_read(small: Catalogue) -> None:
    module = small.find("HO", "99001")
    unrecognised = small.find("HO", "99002")
    assert module is not None and module.kind == "module" and module.recognised
    assert unrecognised is not None and unrecognised.kind == "diploma" and not unrecognised.recognised
    assert unrecognised.big_profession is None


def test_sectors_of_lists_every_sector_that_knows_a_code(small: Catalogue) -> None:
    assert small.sectors_of("56551") == {"HO"}
    assert small.sectors_of("praktijkonderwijs") == {"PRO"}
    assert small.sectors_of("0090") == {"VO"}
    assert small.sectors_of("12345") == set()


def test_sectors_of_returns_a_copy(small: Catalogue) -> None:
    small.sectors_of("56551").add("MBO")
    assert small.sectors_of("56551") == {"HO"}


def test_extra_columns_are_ignored_and_values_are_stripped(tmp_path: Path) -> None:
    catalogue = Catalogue.load(
        write(
            tmp_path,
            "source,code,name,sector,kind,recognised,big_profession,note\n"
            "x, 56551 , B Geneeskunde ,ho,Diploma,TRUE, arts ,y\n",
        )
    )
    assert catalogue.find("HO", "56551") == Programme("56551", "B Geneeskunde", "HO", "diploma", True, "arts")


def test_blank_lines_are_skipped_and_a_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(f"\ufeff{HEADER}\n\n56551,B Geneeskunde,HO,diploma,true,arts\n\n", encoding="utf-8")
    assert len(Catalogue.load(path)) == 1


# --- malformed files are refused, naming the line --------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("", 1),
        ("code,name,sector,kind,recognised\n56551,B Geneeskunde,HO,diploma,true\n", 1),
        (f"{HEADER}\n56551,B Geneeskunde,HO,diploma,true,arts\n56560,B Tandheelkunde,HO,diploma,true\n", 3),
        (f"{HEADER}\n56551,B Geneeskunde,HO,diploma,true,arts,extra\n", 2),
        (f"{HEADER}\n,B Geneeskunde,HO,diploma,true,arts\n", 2),
        (f"{HEADER}\n56551,,HO,diploma,true,arts\n", 2),
        (f"{HEADER}\n56551,B Geneeskunde,WO,diploma,true,arts\n", 2),
        (f"{HEADER}\n56551,B Geneeskunde,HO,course,true,arts\n", 2),
        (f"{HEADER}\n56551,B Geneeskunde,HO,diploma,yes,arts\n", 2),
        (f"{HEADER}\n56551,B Geneeskunde,HO,diploma,true,arts\n56551,Dubbel,HO,diploma,true,\n", 3),
        (f'{HEADER}\n56551,"B Geneeskunde"x,HO,diploma,true,arts\n', 2),
    ],
    ids=[
        "empty",
        "missing-column",
        "too-few-fields",
        "too-many-fields",
        "empty-code",
        "empty-name",
        "bad-sector",
        "bad-kind",
        "bad-recognised",
        "duplicate",
        "bad-quoting",
    ],
)
def test_malformed_catalogue_raises_naming_the_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        Catalogue.load(write(tmp_path, text))


def test_same_code_in_two_sectors_is_allowed(tmp_path: Path) -> None:
    catalogue = Catalogue.load(
        write(
            tmp_path,
            f"{HEADER}\nPraktijkonderwijs,P,PRO,diploma,true,\npraktijkonderwijs,P,VSO,diploma,true,\n",
        )
    )
    assert catalogue.sectors_of("Praktijkonderwijs") == {"PRO", "VSO"}


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Catalogue.load(tmp_path / "absent.csv")
