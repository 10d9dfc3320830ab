"""Read bulk files (CSV and XML) record by record: the one parser for `rod import` and uploads.

Parsing only. Field contents are checked elsewhere; this module turns a file into
`BulkRecord`s (English field names, stripped values, None for absent or empty) and refuses a
file that cannot be read at all with `FileRefused`. Callers run `check_file` (a full
streaming pre-pass) before `read_records`, so a refused file writes nothing.

A refusal names what to fix (its own code, the line, the columns or element concerned):
whatever breaks the file as a whole (an empty file, no records, a header with missing,
unknown or repeated columns or the wrong separator, a CSV in UTF-16 or with a header that is
not UTF-8, XML that is not well-formed or whose root does not match `aanlevering.xsd`). What
breaks one record (a wrong column count, bytes that are not UTF-8 in a cell, an unknown
element in a `<resultaat>`) costs that record only.

Both formats stream: memory stays flat however many records a file holds.

    >>> fmt = sniff_format("results.xml")
    >>> institution = check_file("results.xml", fmt)
    >>> for rec in read_records("results.xml", fmt):
    ...     rec.record, rec.line, rec.action, rec.fields["diploma_number"], rec.problems
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

from lxml import etree

from services.kernel.codes import Problem, problem
from services.kernel.text import is_unicode

StrPath = str | os.PathLike[str]

# Dutch column / element name -> English field key.
FIELD_NAMES: dict[str, str] = {
    "bsn": "bsn",
    "onderwijsnummer": "onderwijsnummer",
    "instellingscode": "institution",
    "vestigingscode": "branch",
    "onderwijsaanbieder": "provider",
    "sector": "sector",
    "opleidingscode": "programme_code",
    "diplomavolgnummer": "diploma_number",
    "diplomadatum": "diploma_date",
    "reden": "reason",
    "toelichting": "explanation",
}
FIELD_KEYS: tuple[str, ...] = tuple(FIELD_NAMES.values())
REQUIRED_COLUMNS: tuple[str, ...] = (
    "instellingscode",
    "vestigingscode",
    "sector",
    "opleidingscode",
    "diplomavolgnummer",
    "diplomadatum",
)
PERSON_COLUMNS: tuple[str, ...] = ("bsn", "onderwijsnummer")
ACTIONS: dict[str, str] = {"registreren": "register", "verwijderen": "delete"}

_CSV_COLUMNS = frozenset(FIELD_NAMES) | {"actie"}
_EMPTY_FIELDS: dict[str, str | None] = dict.fromkeys(FIELD_KEYS)
_MALFORMED = (problem("RECORD_MALFORMED", "record"),)
_ACTION_INVALID = (problem("ACTION_INVALID", "actie"),)
_CONTENT_TYPES = {"text/csv": "csv", "application/xml": "xml", "text/xml": "xml"}
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True, repr=False)
class BulkRecord:
    """One data record of a bulk file, as read; `problems` holds read problems only."""

    record: int
    line: int
    action: str
    fields: dict[str, str | None]
    problems: tuple[Problem, ...] = ()

    def __repr__(self) -> str:
        # Never the field values (person numbers); an invalid actie is user text too.
        action = self.action if self.action in ("register", "delete") else "<invalid>"
        return f"BulkRecord(record={self.record}, line={self.line}, action={action!r})"


class FileRefused(Exception):
    """The file as a whole cannot be processed; nothing of it may be written.

    `params` fill the code's message besides the line (columns, element); the exception's own
    text is the code and the line only.
    """

    def __init__(self, code: str, line: int, **params: str) -> None:
        self.code = code
        self.line = line
        self.params = params
        self.problem = problem(code, "file", line=line, **params)
        super().__init__(f"{code} line {line}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refused, (self.code, self.line, self.params))


def _refused(code: str, line: int, params: dict[str, str]) -> FileRefused:
    return FileRefused(code, line, **params)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z_ .-]{0,39}")


def _shown(name: str, instead: str) -> str:
    """A column, element or attribute name as a message may show it: letters only, else `instead`.

    A name with digits might be a person number (a file whose first line is data): never echoed.
    """
    return name if _PLAIN_NAME.fullmatch(name) else instead


def sniff_format(path: StrPath, content_type: str | None = None) -> str:
    """Return "csv" or "xml": a known content type wins, else the first non-blank byte decides."""
    if content_type:
        fmt = _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())
        if fmt is not None:
            return fmt
    return "xml" if _first_byte(path) == b"<" else "csv"


def _first_byte(path: StrPath) -> bytes:
    """The file's first byte that is not a byte-order mark or blank (b"" for a blank file)."""
    with open(path, "rb") as f:
        chunk = f.read(_CHUNK)
        for bom in _BOMS:
            if chunk.startswith(bom):
                chunk = chunk[len(bom) :]
                break
        while chunk:
            rest = chunk.lstrip(b" \t\r\n\x00")
            if rest:
                return rest[:1]
            chunk = f.read(_CHUNK)
    return b""


def check_file(path: StrPath, fmt: str) -> str | None:
    """Read the whole file once, raising FileRefused if it cannot be processed at all.

    Returns the institution the file declares (the XML root's `instellingscode`; None for CSV).
    """
    if fmt == "csv":
        for _ in _csv_rows(path):
            pass
        return None
    if fmt == "xml":
        if not _first_byte(path):
            raise FileRefused("FILE_EMPTY", 1)
        institution, line = _xml_root(path)
        if not sum(1 for _ in _xml_children(path)):  # every child read: the whole file is checked
            raise FileRefused("FILE_NO_RECORDS", line)
        return institution
    raise ValueError(f"unknown bulk-file format {fmt!r}")


def read_records(path: StrPath, fmt: str) -> Iterator[BulkRecord]:
    """Yield the file's data records in order, streaming; run `check_file` first."""
    if fmt == "csv":
        return _csv_records(path)
    if fmt == "xml":
        return _xml_records(path)
    raise ValueError(f"unknown bulk-file format {fmt!r}")


def _not_text(fields: dict[str, str | None]) -> tuple[Problem, ...]:
    """TEXT_NOT_UNICODE per field that held bytes that are not UTF-8: a CSV reads them as lone
    surrogates, an XML file as U+FFFD (the mark decoders leave where text was lost, so it is
    refused wherever it comes from). Such a field costs its record only."""
    if "".join(filter(None, fields.values())).isascii():
        return ()  # the common case, at a glance
    return tuple(problem("TEXT_NOT_UNICODE", name) for name, value in fields.items()
                 if value and ("\ufffd" in value or not is_unicode(value)))


def _action(text: str | None) -> tuple[str, tuple[Problem, ...]]:
    if text is None:
        return "register", ()
    lowered = text.lower()
    action = ACTIONS.get(lowered)
    if action is None:
        return lowered, _ACTION_INVALID
    return action, ()


# --- CSV ----------------------------------------------------------------------------------


def _csv_records(path: StrPath) -> Iterator[BulkRecord]:
    record = 0
    for line, names, row in _csv_rows(path):
        if len(row) != len(names):
            if not any(cell.strip() for cell in row):
                continue  # a blank line, or separators only
            record += 1
            yield BulkRecord(record, line, "register", dict(_EMPTY_FIELDS), _MALFORMED)
            continue
        values = [cell.strip() or None for cell in row]
        if not any(values):
            continue
        record += 1
        fields = dict(_EMPTY_FIELDS)
        fields.update(zip(names, values, strict=True))
        broken = _not_text(fields)
        action, problems = _action(fields.pop("actie", None))
        yield BulkRecord(record, line, action, fields, broken + problems)


def _csv_rows(path: StrPath) -> Iterator[tuple[int, list[str], list[str]]]:
    """Yield (start line, English header keys, raw cells) per CSV row after the header."""
    with _csv_text(path) as text:
        header_line, delimiter, names = _csv_header(text)
        reader = csv.reader(text, delimiter=delimiter)
        done = 0
        data = False  # a row with a cell that is not blank was seen
        try:
            for row in reader:
                yield header_line + done + 1, names, row
                done = reader.line_num
                data = data or any(cell.strip() for cell in row)
        except csv.Error:
            raise FileRefused("FILE_MALFORMED", header_line + reader.line_num) from None
        if not data:
            raise FileRefused("FILE_NO_RECORDS", header_line)


def _csv_text(path: StrPath) -> io.TextIOWrapper:
    """The file as text; bytes that are not UTF-8 become lone surrogates, refused per record."""
    guarded = io.BufferedReader(_LineLengthGuard(open(path, "rb")), _CHUNK)  # noqa: SIM115
    return io.TextIOWrapper(guarded, encoding="utf-8-sig", errors="surrogateescape", newline="")


_LINE_MAX = 1 << 20  # bytes; longer is no CSV record, and must not be buffered whole


class _LineLengthGuard(io.RawIOBase):
    """Refuse a line longer than _LINE_MAX as it streams past, before anyone buffers it.

    Text readers collect a whole line before the csv module sees it, so a file with no line
    ends at all would otherwise be read into memory in one piece.
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self._run = 0  # bytes since the last line end
        self._line = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            data = bytes(buffer[:n])
            last = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if last < 0:
                self._run += n
            else:
                first = min(i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0)
                self._run += first
            if self._run > _LINE_MAX:
                raise FileRefused("FILE_MALFORMED", self._line)
            if last >= 0:
                self._run = n - last - 1
            self._line += data.count(b"\n")
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _csv_header(text: io.TextIOWrapper) -> tuple[int, str, list[str]]:
    """Read the header: its line, the delimiter it uses and its columns as English keys."""
    line_no = 0
    for line_no, line in enumerate(text, 1):  # noqa: B007
        if line.strip():
            break
    else:
        raise FileRefused("FILE_EMPTY", 1)
    if "\x00" in line or not is_unicode(line):  # UTF-16 or -32 (NUL bytes, their BOM), Latin-1 ...
        raise FileRefused("FILE_NOT_UTF8", line_no)
    delimiter = ";" if line.count(";") > line.count(",") else ","
    columns = [name.strip().lower() for name in next(csv.reader([line], delimiter=delimiter))]
    _check_columns(columns, line, line_no)
    return line_no, delimiter, [FIELD_NAMES.get(name, name) for name in columns]


# separators people use by mistake, as the message names them (the same in Dutch and English)
_WRONG_SEPARATORS = {"\t": "tab", "|": "|", ":": ":"}
_PERSON = "/".join(PERSON_COLUMNS)  # one of the two is required
_COLUMN_LIST = ", ".join([_PERSON, *REQUIRED_COLUMNS])
_KNOWN_COLUMNS = ", ".join([*FIELD_NAMES, "actie"])


def _check_columns(columns: list[str], line: str, line_no: int) -> None:
    """Refuse a header the register cannot use, naming what to change."""
    known = [name for name in columns if name in _CSV_COLUMNS]
    if not known:
        for separator, said in _WRONG_SEPARATORS.items():
            cells = [cell.strip().lower() for cell in line.split(separator)]
            if len(cells) > 1 and _CSV_COLUMNS.intersection(cells):
                raise FileRefused("SEPARATOR_INVALID", line_no, separator=said)
        raise FileRefused("HEADER_MISSING", line_no, columns=_COLUMN_LIST)
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if not set(PERSON_COLUMNS).intersection(columns):
        missing.insert(0, _PERSON)
    if missing:
        raise FileRefused("COLUMNS_MISSING", line_no, columns=", ".join(missing))
    unknown = [_shown(name, f"#{i}") for i, name in enumerate(columns, 1) if name not in _CSV_COLUMNS]
    if unknown:
        raise FileRefused("COLUMNS_UNKNOWN", line_no, columns=", ".join(unknown), known=_KNOWN_COLUMNS)
    twice = sorted({name for name in columns if columns.count(name) > 1})
    if twice:
        raise FileRefused("COLUMNS_DUPLICATE", line_no, columns=", ".join(twice))


# --- XML ----------------------------------------------------------------------------------

# No DTD is loaded, no entity resolved, no network used; libxml2's size limits stay on.
_XML_OPTIONS = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
}
_ROOT = "aanlevering"
_RECORD = "resultaat"
_PROLOG_MAX = 1 << 20  # bytes before the root element; more is not a bulk file
_RECORD_MAX_ELEMENTS = 256  # a record has about a dozen; far more is not a record


def _xml_records(path: StrPath) -> Iterator[BulkRecord]:
    institution, _ = _xml_root(path)
    line = 0
    for record, element in enumerate(_xml_children(path), 1):
        line = max(_start_line(element), line)
        if element.tag == _RECORD:
            yield _xml_record(element, record, line, institution)
        else:
            fields = dict(_EMPTY_FIELDS)
            fields["institution"] = institution
            yield BulkRecord(record, line, "register", fields, _MALFORMED)


# element name -> (field key, bit), to spot an element given twice without a second pass
_ELEMENTS = {name: (key, 1 << i) for i, (name, key) in enumerate(FIELD_NAMES.items())}


def _xml_record(element: etree._Element, record: int, line: int, institution: str | None) -> BulkRecord:
    fields = dict(_EMPTY_FIELDS)
    seen = 0
    malformed = False
    for child in element:
        entry = _ELEMENTS.get(child.tag)  # type: ignore[arg-type]
        if entry is None or seen & entry[1] or len(child):
            malformed = True  # unknown, repeated or nested
            continue
        seen |= entry[1]
        text = child.text
        fields[entry[0]] = text.strip() or None if text else None
    if fields["institution"] is None:
        fields["institution"] = institution
    actie = element.get("actie")
    broken = _not_text({**fields, "actie": actie})
    action, problems = _action(actie.strip() or None if actie else None)
    if malformed:
        problems = _MALFORMED + problems
    return BulkRecord(record, line, action, fields, broken + problems)


_BIG_LINE = 65535


def _start_line(element: etree._Element) -> int:
    """The line where the element's start tag ends, also past line 65535.

    libxml2 keeps an element's line in 16 bits; beyond that lxml's `sourceline` is the line
    where the first text inside ended (reached through first children), or for an element
    without content the text after it. Counting back that text's newlines recovers the line;
    a record with no content and no text after it yet keeps the approximation (the caller
    keeps lines from going backwards).
    """
    line = element.sourceline or 0
    if line < _BIG_LINE:
        return line
    node = element
    while node.text is None and len(node):
        node = node[0]
    if node.text:
        return line - node.text.count("\n")
    if node is element and element.tail:
        return line - element.tail.count("\n")
    return line


# a character reference to a surrogate (U+D800 to U+DFFF), in hex or decimal
_SURROGATE_REF = re.compile(
    r"&#(?:x0*[dD][89a-fA-F][0-9a-fA-F]{2}"
    r"|0*(?:5529[6-9]|55[3-9][0-9]{2}|56[0-9]{3}|57[0-2][0-9]{2}|573[0-3][0-9]|5734[0-3]));"
)
_DECLARED_ENCODING = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")


class _XmlBytes:
    """The file's bytes as lxml reads them. In a UTF-8 file, bytes that are not UTF-8 and
    references to surrogates become U+FFFD (line ends stay where they are), so libxml2 does not
    refuse the whole file and `_not_text` refuses just the record that holds them."""

    def __init__(self, path: StrPath) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        head = self._file.read(_CHUNK)
        self._file.seek(0)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if _is_utf8(head) else None
        self._carry = ""  # a reference that may go on in the next chunk

    def __enter__(self) -> _XmlBytes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()

    def read(self, size: int) -> bytes:
        """Up to about `size` bytes; b"" only at the end of the file."""
        while True:
            chunk = self._file.read(size)
            if self._decoder is None:
                return chunk
            text = self._carry + self._decoder.decode(chunk, final=not chunk)
            self._carry = ""
            cut = text.rfind("&")
            if chunk and cut >= 0 and ";" not in text[cut:] and len(text) - cut < 16:
                text, self._carry = text[:cut], text[cut:]
            data = _SURROGATE_REF.sub("\ufffd", text).encode()
            if data or not chunk:
                return data


def _is_utf8(head: bytes) -> bool:
    """Is the file UTF-8: no UTF-16 marks, and no other encoding declared?"""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"<\x00", b"\x00<")):
        return False
    declared = _DECLARED_ENCODING.match(head.removeprefix(codecs.BOM_UTF8))
    return declared is None or declared.group(1).lower() in (b"utf-8", b"utf8")


def _xml_root(path: StrPath) -> tuple[str | None, int]:
    """Check the prolog and the root element; return the root's `instellingscode` and line."""
    _refuse_doctype(path)
    parser = etree.XMLPullParser(events=("start",), **_XML_OPTIONS)
    try:
        with _XmlBytes(path) as f:
            while chunk := f.read(_CHUNK):
                parser.feed(chunk)
                for _, root in parser.read_events():
                    line = root.sourceline or 1
                    docinfo = root.getroottree().docinfo
                    if docinfo.doctype or docinfo.internalDTD is not None:
                        raise FileRefused("FILE_MALFORMED", line)
                    _check_root(root, line)
                    institution = root.get("instellingscode")
                    return (institution.strip() or None if institution else None), line
            parser.close()
    except etree.XMLSyntaxError as e:
        raise _syntax_refusal(e, e.lineno or 1) from None
    raise FileRefused("XML_NOT_WELL_FORMED", 1)


# libxml2's errors that say the bytes are not text in the (declared) encoding
_ENCODING_ERRORS = frozenset(
    {etree.ErrorTypes.ERR_INVALID_ENCODING, etree.ErrorTypes.ERR_UNSUPPORTED_ENCODING,
     etree.ErrorTypes.ERR_UNKNOWN_ENCODING}
)


def _syntax_refusal(error: etree.XMLSyntaxError, line: int) -> FileRefused:
    """The refusal for XML that libxml2 cannot parse: an encoding problem, or not well-formed."""
    code = "FILE_NOT_UTF8" if error.code in _ENCODING_ERRORS else "XML_NOT_WELL_FORMED"
    return FileRefused(code, line)


_XSD = Path(__file__).resolve().parents[2] / "schemas" / "xml" / "aanlevering.xsd"


@cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(_XSD)))


_XSD_PLACE = re.compile(r"Element '([^']*)'(?:, attribute '([^']*)')?")
_XSD_REQUIRED = re.compile(r"attribute '([^']*)' is required")


def _check_root(root: etree._Element, line: int) -> None:
    """Refuse a root element that does not match aanlevering.xsd (its tag and attributes).

    Only the root is held against the schema here: each `<resultaat>` is checked as a record,
    so one that breaks the schema costs that record only.
    """
    start_tag = [root.tag, *root.keys(), *root.values()]
    if any("\ufffd" in text for text in start_tag):  # _XmlBytes marks bytes that are not UTF-8
        raise FileRefused("FILE_NOT_UTF8", line)
    skeleton = etree.Element(root.tag, attrib=dict(root.attrib))  # the start tag, no children
    schema = _schema()
    if schema.validate(skeleton):
        return
    error = schema.error_log[0]
    place = _XSD_PLACE.match(error.message)
    required = _XSD_REQUIRED.search(error.message)
    attribute = required.group(1) if required else place.group(2) if place else None
    qname = etree.QName(root)
    where = ("…:" if qname.namespace else "") + _shown(qname.localname, "…")  # the namespace unsaid
    if attribute is not None:
        where += f"/@{_shown(attribute, '…')}"
    raise FileRefused("XML_SCHEMA_INVALID", line, element=where)


def _xml_children(path: StrPath) -> Iterator[etree._Element]:
    """Yield each child element of the root once complete, in order, then drop it.

    The caller reads an element only while it holds it. Between chunks, finished children
    that are not records are handed out and dropped too, so memory stays flat even for a
    file that holds no `<resultaat>` at all.
    """
    parser = etree.XMLPullParser(events=("start", "end"), tag=(_ROOT, _RECORD), **_XML_OPTIONS)
    root: etree._Element | None = None
    done: etree._Element | None = None  # the last record handed out, cleared
    try:
        with _XmlBytes(path) as f:
            while True:
                chunk = f.read(_CHUNK)
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.close()
                for event, element in parser.read_events():
                    if root is None:
                        root = element  # _xml_root made sure the first event is its start
                    elif event == "end" and element.tag == _RECORD and element.getparent() is root:
                        while root[0] is not element:
                            if root[0] is not done:
                                yield root[0]
                            del root[0]
                        yield element
                        element.clear(keep_tail=True)
                        done = element
                if root is None:
                    if not chunk:
                        return
                    continue
                keep = 1 if chunk else 0  # the last child may still be open
                while len(root) > keep:
                    if root[0] is not done:
                        yield root[0]
                    del root[0]
                if not chunk:
                    return
                if len(root) and _larger_than(root[-1], _RECORD_MAX_ELEMENTS):
                    raise FileRefused("FILE_MALFORMED", _start_line(root[-1]))
    except etree.XMLSyntaxError as e:
        # Some errors (an undeclared entity) stop the parser without a position.
        raise _syntax_refusal(e, e.lineno or _last_line(root)) from None


def _last_line(root: etree._Element | None) -> int:
    """The line of the last element parsed, for an error libxml2 reports without one."""
    if root is None:
        return 1
    node = root
    while len(node):
        node = node[-1]
    return _start_line(node)


def _larger_than(element: etree._Element, limit: int) -> bool:
    return sum(1 for _ in islice(element.iter(), limit + 1)) > limit


def _refuse_doctype(path: StrPath) -> None:
    """Refuse any DOCTYPE or other `<!` declaration before lxml reads the file.

    A bulk file needs no DTD, and refusing here means no entity is ever declared, let alone
    resolved or expanded (XXE, billion laughs). Only the prolog is read.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        encoding = "latin-1"  # enough to see ASCII markup in UTF-8 and its relatives
        if head.startswith(codecs.BOM_UTF8):
            head = head[3:]
        elif head.startswith((codecs.BOM_UTF16_LE, b"<\x00")):
            encoding = "utf-16-le"
        elif head.startswith((codecs.BOM_UTF16_BE, b"\x00<")):
            encoding = "utf-16-be"
        decoder = codecs.getincrementaldecoder(encoding)("replace")
        text = decoder.decode(head).lstrip("\ufeff")
        pos, read = 0, len(head)
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            end = _prolog_item_end(text, pos)
            if end is None:  # undecided: read on
                chunk = f.read(_CHUNK)
                if not chunk or read > _PROLOG_MAX:
                    if read > _PROLOG_MAX:
                        raise FileRefused("FILE_MALFORMED", text.count("\n", 0, pos) + 1)
                    return  # lxml reports what is wrong with an unfinished prolog
                read += len(chunk)
                text += decoder.decode(chunk)
            elif end < 0:
                raise FileRefused("FILE_MALFORMED", text.count("\n", 0, pos) + 1)
            elif end == pos:
                return  # the root element (or something lxml will refuse)
            else:
                pos = end


def _prolog_item_end(text: str, pos: int) -> int | None:
    """End of the prolog item at `pos`: -1 for a declaration, pos for anything else, None to read on."""
    rest = text[pos : pos + 4]
    if len(rest) < 4:
        return None
    if rest.startswith("<?"):
        end = text.find("?>", pos + 2)
        return None if end < 0 else end + 2
    if rest == "<!--":
        end = text.find("-->", pos + 4)
        return None if end < 0 else end + 3
    if rest.startswith("<!"):
        return -1
    return pos
