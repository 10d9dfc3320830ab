"""The one table of rejection and warning codes: code -> Dutch message -> English doc line.

Codes are stable: the HTTP API, bulk feedback, the CLI and events all carry them unchanged.
Nothing else in the code base spells a message; build a `Problem` with `problem()`.
Messages never contain the offending value, so no person number can leak through them; a
message may name a column, an element or a line (its `{parameters}`, listed in the doc line).
"""

from __future__ import annotations

from dataclasses import dataclass

# code: (Dutch message for institutions, English line for the docs)
CODES: dict[str, tuple[str, str]] = {
    # person numbers
    "PERSON_NUMBER_MISSING": (
        "Geef een BSN of een onderwijsnummer op.",
        "Neither a BSN nor an onderwijsnummer was given.",
    ),
    "PERSON_NUMBER_AMBIGUOUS": (
        "Geef een BSN of een onderwijsnummer op, niet allebei.",
        "Both a BSN and an onderwijsnummer were given; give exactly one.",
    ),
    "BSN_INVALID": (
        "Het BSN is ongeldig (9 cijfers en de elfproef).",
        "The BSN is not 9 digits or fails the eleven test.",
    ),
    "ONDERWIJSNUMMER_INVALID": (
        "Het onderwijsnummer is ongeldig (9 cijfers, begint met 10, elfproef rest 5).",
        "The onderwijsnummer is not 9 digits starting with 10 whose weighted sum mod 11 is 5.",
    ),
    "BSN_IS_ONDERWIJSNUMMER": (
        "In het veld BSN staat een onderwijsnummer; gebruik het veld onderwijsnummer.",
        "The bsn field holds a valid onderwijsnummer; use the onderwijsnummer field.",
    ),
    "ONDERWIJSNUMMER_IS_BSN": (
        "In het veld onderwijsnummer staat een BSN; gebruik het veld BSN.",
        "The onderwijsnummer field holds a valid BSN; use the bsn field.",
    ),
    # institutions and locations
    "INSTITUTION_CODE_INVALID": (
        "De instellingscode is ongeldig (twee cijfers en twee hoofdletters, bijv. 25BE).",
        "The instellingscode is not two digits followed by two capitals.",
    ),
    "INSTITUTION_UNKNOWN": (
        "De instelling is niet bekend in het register.",
        "The institution is not known to the register.",
    ),
    "INSTITUTION_FORBIDDEN": (
        "U mag niet namens deze instelling aanleveren.",
        "The record belongs to an institution other than the one you act for.",
    ),
    "BRANCH_CODE_INVALID": (
        "De vestigingscode is ongeldig (instellingscode plus twee cijfers, bijv. 25BE01).",
        "The vestigingscode is not the instellingscode followed by two digits.",
    ),
    "BRANCH_NOT_OF_INSTITUTION": (
        "De vestiging hoort niet bij deze instelling.",
        "The vestigingscode belongs to another institution.",
    ),
    "PROVIDER_CODE_INVALID": (
        "De onderwijsaanbiedercode is ongeldig (vorm 999A999, bijv. 110A133).",
        "The onderwijsaanbieder (RIO) code is not of the form 999A999.",
    ),
    # sector and programme
    "SECTOR_INVALID": (
        "De sector is ongeldig (VO, PRO, VSO, MBO of HO).",
        "The sector is not one of VO, PRO, VSO, MBO, HO.",
    ),
    "SECTOR_NOT_OF_INSTITUTION": (
        "De instelling is niet bekend in deze sector.",
        "The institution is not registered for this sector.",
    ),
    "VERVOLGONDERWIJS_USES_EXAM_RESULTS": (
        "Vervolgonderwijs wordt via de examenresultaten aangeleverd, niet met dit bericht.",
        "Vervolgonderwijs results go through the exam-results route, not this message.",
    ),
    "PROGRAMME_UNKNOWN": (
        "De opleidingscode is niet bekend.",
        "The programme code is not in the programme catalogue.",
    ),
    "PROGRAMME_SECTOR_MISMATCH": (
        "De opleidingscode hoort bij een andere sector.",
        "The programme code belongs to another sector.",
    ),
    "HO_MODULE_HAS_NO_RESULT": (
        "Voor een module in het hoger onderwijs wordt geen resultaat geregistreerd.",
        "HO results are registered only for a full diploma, not for a module.",
    ),
    "PROGRAMME_NOT_RECOGNISED": (
        "Een niet-bekostigde instelling levert alleen erkende opleidingen aan.",
        "An unfunded institution may deliver results only for recognised programmes.",
    ),
    # dates and diploma number
    "DIPLOMA_DATE_INVALID": (
        "De diplomadatum is geen geldige datum (JJJJ-MM-DD).",
        "The diploma date is not a real date in YYYY-MM-DD form.",
    ),
    "DIPLOMA_DATE_IN_FUTURE": (
        "De diplomadatum ligt in de toekomst.",
        "The diploma date is after today (Europe/Amsterdam).",
    ),
    "PRO_VSO_SCHOOL_YEAR_CLOSED": (
        "Diploma's pro/vso van schooljaar 2021-2022 en eerder kunnen niet worden uitgewisseld.",
        "PRO/VSO diplomas dated before 2022-08-01 cannot be exchanged.",
    ),
    "DIPLOMA_NUMBER_INVALID": (
        "Het diplomavolgnummer is ongeldig (1 tot 20 letters, cijfers of streepjes).",
        "The diploma number is not 1-20 letters, digits or dashes.",
    ),
    "FIELD_REQUIRED": (
        "Dit veld is verplicht.",
        "A required field is missing.",
    ),
    "FIELD_UNKNOWN": (
        "Dit veld is onbekend.",
        "The request carries a field the register does not know.",
    ),
    "FIELD_TYPE_INVALID": (
        "Dit veld heeft een ongeldig type.",
        "The field has the wrong type (for example a number where text is expected).",
    ),
    "TEXT_NOT_UNICODE": (
        "Deze tekst is geen geldige Unicode (UTF-8); verwijder het ongeldige teken.",
        "The text is not valid Unicode: a lone surrogate (a JSON \\ud800) or bytes that are not UTF-8.",
    ),
    # identity, idempotency, deletion
    "RESULT_CONFLICT": (
        "Dit resultaat is al geregistreerd met andere gegevens.",
        "The same institution, person and diploma number is registered with different data.",
    ),
    "DELETION_REASON_INVALID": (
        "De reden van verwijderen is onbekend.",
        "The deletion reason is not one of the known codes.",
    ),
    "EXPLANATION_REQUIRED": (
        "Bij deze reden is een toelichting verplicht.",
        "Deletions for FRAUD or OTHER need an explanation.",
    ),
    "RESULT_NOT_FOUND": (
        "Het resultaat is niet gevonden.",
        "No result with this id (or key) exists for this institution.",
    ),
    "RESULT_ALREADY_DELETED": (
        "Het resultaat is al verwijderd.",
        "The result has already been deleted.",
    ),
    "ACTION_INVALID": (
        "De actie is onbekend (registreren of verwijderen).",
        "The actie is neither registreren nor verwijderen.",
    ),
    # bulk files
    "FILE_FORMAT_NOT_ALLOWED": (
        "Mbo-instellingen leveren bulkbestanden alleen als XML aan.",
        "MBO institutions may deliver bulk files only as XML.",
    ),
    # A file refused as a whole: the English line reads as the message with the same {parameters}.
    "FILE_MALFORMED": (
        "Het bestand kan niet worden gelezen (regel {line}).",
        "The file cannot be read (line {line}): a DTD in XML, a line over 1 MiB, a cell or record too large.",
    ),
    "FILE_EMPTY": (
        "Het bestand is leeg: er staat niets in, ook geen kopregel.",
        "The file is empty: it holds nothing, not even a header.",
    ),
    "FILE_NO_RECORDS": (
        "Het bestand bevat geen resultaten: na regel {line} (de kopregel of <aanlevering>) staat "
        "geen record.",
        "The file holds no results: no record follows line {line} (the header or <aanlevering>).",
    ),
    "FILE_NOT_UTF8": (
        "Het bestand is geen UTF-8-tekst (regel {line}); sla het op in de codering UTF-8.",
        "The file is not UTF-8 text (line {line}); save it in the UTF-8 encoding. (A record whose "
        "text alone is not UTF-8 costs that record only: TEXT_NOT_UNICODE.)",
    ),
    "SEPARATOR_INVALID": (
        "De kopregel (regel {line}) is gescheiden door {separator}; gebruik een komma (,) of een "
        "puntkomma (;) als scheidingsteken.",
        "The header (line {line}) is separated by {separator}; use a comma (,) or a semicolon (;).",
    ),
    "HEADER_MISSING": (
        "Regel {line} is geen kopregel: geen van de kolomnamen is bekend. Zet de kolomnamen op de "
        "eerste regel: {columns}.",
        "Line {line} is no header: it names no known column. Put the column names on the first "
        "line: {columns}.",
    ),
    "COLUMNS_MISSING": (
        "In de kopregel (regel {line}) ontbreken verplichte kolommen: {columns}.",
        "The header (line {line}) lacks required columns: {columns}.",
    ),
    "COLUMNS_UNKNOWN": (
        "De kopregel (regel {line}) heeft onbekende kolommen: {columns}. Bekende kolommen zijn: {known}.",
        "The header (line {line}) has unknown columns: {columns}. The known columns are: {known}. "
        "(A name that is not plain letters is shown by its position, #3.)",
    ),
    "COLUMNS_DUPLICATE": (
        "De kopregel (regel {line}) noemt deze kolommen meer dan eens: {columns}.",
        "The header (line {line}) names these columns more than once: {columns}.",
    ),
    "XML_NOT_WELL_FORMED": (
        "Het XML-bestand is niet goed gevormd (regel {line}); controleer de tags op en vlak voor die regel.",
        "The XML is not well-formed (line {line}); check the tags on and just before that line.",
    ),
    "XML_SCHEMA_INVALID": (
        "Het XML-bestand past niet bij het schema aanlevering.xsd: {element} op regel {line}. Verwacht "
        'is één <aanlevering instellingscode="..."> zonder namespace en zonder andere attributen.',
        "The XML file does not match the schema aanlevering.xsd: {element} on line {line}. Expected is "
        'one <aanlevering instellingscode="..."> without a namespace or other attributes. (A '
        "<resultaat> that breaks the schema costs that record only.)",
    ),
    "FILE_TOO_LARGE": (
        "Het bestand is te groot.",
        "The file exceeds the size limit.",
    ),
    "RECORD_MALFORMED": (
        "Deze regel kan niet worden gelezen (aantal kolommen of structuur).",
        "This record cannot be read (wrong column count or structure); other records go on.",
    ),
    # the HTTP API
    "TOKEN_MISSING": (
        "Stuur een bearer token mee (Authorization: Bearer ...).",
        "The request carries no bearer token.",
    ),
    "TOKEN_INVALID": (
        "Het token is onbekend of ongeldig.",
        "The bearer token is not known to the register.",
    ),
    "TOKEN_FORBIDDEN": (
        "Dit token geeft geen toegang tot dit adres.",
        "The token is valid but not for this endpoint: another kind of token, or another subscription.",
    ),
    "TOO_MANY_FAILED_LOGINS": (
        "Te veel mislukte aanmeldingen vanaf dit adres; probeer het opnieuw na Retry-After seconden.",
        "Too many unknown tokens from this client address in a minute (ROD_AUTH_FAILURES_PER_MINUTE, "
        "default 10); every token from it is refused until Retry-After has passed.",
    ),
    "CURSOR_INVALID": (
        "De cursor is ongeldig: gebruik een cursor die deze feed heeft gegeven.",
        "The cursor is malformed, belongs to another feed, or was never handed out by this one.",
    ),
    "BODY_MALFORMED": (
        "Het verzoek kan niet worden gelezen (verwacht een JSON-object).",
        "The request body is not a readable JSON object.",
    ),
    "BODY_TOO_LARGE": (
        "Het verzoek is te groot.",
        "The request body exceeds the size limit.",
    ),
    "CONTENT_TYPE_UNSUPPORTED": (
        "Dit type inhoud wordt hier niet aangenomen (text/csv of application/xml).",
        "The Content-Type is not one this endpoint accepts (text/csv or application/xml).",
    ),
    "PARAMETER_INVALID": (
        "Een parameter in het adres is ongeldig.",
        "A path or query parameter is invalid.",
    ),
    "BATCH_NOT_FOUND": (
        "De aanlevering is niet gevonden.",
        "No batch with this id exists.",
    ),
    "NOT_FOUND": (
        "Dit adres bestaat niet.",
        "No endpoint at this path.",
    ),
    "METHOD_NOT_ALLOWED": (
        "Deze methode is hier niet toegestaan.",
        "The endpoint does not accept this HTTP method.",
    ),
    "HEADERS_TOO_LARGE": (
        "De kopregels van het verzoek zijn te groot.",
        "The request line and headers exceed ROD_HTTP_MAX_HEADER_BYTES; the connection is closed.",
    ),
    "HOST_NOT_ALLOWED": (
        "Dit adres (Host) hoort niet bij het register.",
        "The Host header names a host not in ROD_ALLOWED_HOSTS.",
    ),
    "INTERNAL_ERROR": (
        "Er ging iets mis in het register; noem het correlatienummer als u contact opneemt.",
        "An unexpected error; the answer carries a correlation id to quote.",
    ),
    # chain impact of a deletion (not errors: what the answer tells the institution)
    "IMPACT_NONE": (
        "Dit resultaat is nog niet aan afnemers doorgegeven en er is geen uittreksel van verstrekt.",
        "The result has not reached any consumer and no extract showed it.",
    ),
    "IMPACT_DELIVERED": (
        "Let op: dit resultaat is al aan afnemers doorgegeven; zij krijgen bericht van de verwijdering.",
        "The result was already delivered to consumers; they receive a withdrawal notice.",
    ),
    "IMPACT_ACKNOWLEDGED": (
        "Een afnemer heeft bovendien bevestigd dat hij het resultaat heeft verwerkt.",
        "A consumer has also confirmed it processed the result (an acknowledgement on its feed).",
    ),
    "IMPACT_EXTRACT_ISSUED": (
        "Let op: er is al een uittreksel met dit resultaat verstrekt; dat uittreksel blijft bestaan.",
        "An extract showing the result was already issued; it cannot be called back.",
    ),
    # warnings (registered, with a remark)
    "LATE_DELIVERY": (
        "Let op: de diplomadatum ligt meer dan een jaar voor de aanlevering.",
        "Warning: the diploma date is more than a year before delivery.",
    ),
    # extracts (Mijn diploma's) and their verification
    "RESULT_NOT_STANDING": (
        "Dit resultaat staat nu niet op naam van deze persoon; er is geen uittreksel gemaakt.",
        "A requested result is not a standing result of this person (or none stands); nothing was issued.",
    ),
    "EXTRACT_NOT_FOUND": (
        "Het uittreksel is niet gevonden.",
        "No extract with this id was issued through this portal.",
    ),
    "LANGUAGE_INVALID": (
        "De taal is ongeldig (nl of en).",
        "The language is neither nl nor en.",
    ),
    "VERIFICATION_NOT_FOUND": (
        "Er is geen uittreksel gevonden bij dit uittrekselnummer en deze controlecode.",
        "No extract matches this id and verification code (an unknown id and a wrong code look the same).",
    ),
    "VERIFICATION_THROTTLED": (
        "Te veel pogingen; probeer het over een minuut opnieuw.",
        "More than 30 verification attempts a minute from one client address; wait for Retry-After.",
    ),
    # the log's checkpoints and proofs (GET /v1/log/...)
    "LOG_NO_CHECKPOINT": (
        "Er is nog geen checkpoint van het logboek getekend; probeer het later opnieuw.",
        "No checkpoint has been signed yet (the log component has not run yet); try again later.",
    ),
    "LOG_KEY_UNKNOWN": (
        "De sleutel van het logboek is nog niet bekend; probeer het later opnieuw.",
        "The log component has not run yet, so its verifier key is not known; try again later.",
    ),
    "LOG_NUMBER_INVALID": (
        "Geef hier een geheel getal op.",
        "The query parameter named in `field` is missing or not a whole number.",
    ),
    "LOG_SIZE_BEYOND_CHECKPOINT": (
        "De boomgrootte is groter dan die van het nieuwste checkpoint ({newest}); "
        "vraag om hoogstens {newest}.",
        "The tree size is beyond the newest checkpoint's ({newest}); ask for at most {newest} "
        "(GET /v1/log/checkpoint).",
    ),
    "LOG_POSITION_OUT_OF_RANGE": (
        "De positie ligt niet tussen 1 en de boomgrootte ({tree_size}).",
        "The position is not between 1 and the tree size ({tree_size}).",
    ),
    "LOG_SIZES_OUT_OF_ORDER": (
        "De eerste boomgrootte moet minstens 1 zijn en niet groter dan de tweede.",
        "`first` must be at least 1 and at most `second`.",
    ),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with (or remarkable about) an input: field, stable code, Dutch message."""

    field: str | None
    code: str
    message: str
    params: tuple[tuple[str, str], ...] = ()  # what fills the message's {places}, by name

    def as_dict(self) -> dict[str, str | None]:
        return {"field": self.field, "code": self.code, "message": self.message}

    def text(self, lang: str = "nl") -> str:
        """The message in Dutch (`nl`), or the English line with the same parameters (`en`)."""
        return message(self.code, lang, **dict(self.params))


def problem(code: str, field: str | None = None, **params: object) -> Problem:
    """Build the Problem for `code`; an unknown code or a missing parameter is a programming error.

    Parameters fill the message's `{name}` places; they are names, lines and positions, never a
    value from the input (so never a person number).

        >>> problem("FILE_NOT_UTF8", "file", line=1).message
        'Het bestand is geen UTF-8-tekst (regel 1); sla het op in de codering UTF-8.'
    """
    filled = tuple(sorted((name, str(value)) for name, value in params.items()))
    return Problem(field=field, code=code, message=message(code, "nl", **params), params=filled)


def message(code: str, lang: str = "nl", **params: object) -> str:
    """The code's Dutch message, or with `lang` "en" its English line, its {places} filled in.

    Parameters the text does not name are left out; one it names but was not given is a KeyError.
    """
    text = CODES[code][1 if lang == "en" else 0]
    return text.format(**params) if "{" in text else text
