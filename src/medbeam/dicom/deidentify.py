"""De-identification of one pydicom dataset: PS3.15 Annex E Basic Profile + options, keyed and consistent.

No Beam, no I/O. Why keyed hashes and not a lookup table: workers on a cluster, and reruns months later,
must map the same UID, PatientID or AccessionNumber the same way without sharing state; HMAC-SHA256 with
the user's secret gives that, and without the secret the pseudonyms cannot be linked back or across
projects. A different key gives unlinkable outputs.

The profile: Table E.1-1 as generated into `deid_table` (one action per attribute), applied recursively
into sequences. Combined actions are resolved as the standard allows, towards keeping the output valid:
X/Z → Z, Z/D and X/D → D (a sequence with X/D is removed), X/Z/D → Z, X/Z/U* → sequences kept with their
UIDs replaced. D on a sequence empties it, except the SR Content Sequence, whose tree is kept with every
name, text, date and UID in it replaced (so an SR stays an SR). The option columns of the table are applied
by rule: dates by VR (DA/DT/TM), UIDs by VR (UI), device, institution and patient characteristics by the
named lists below, Clean Descriptors by keyword (descriptions, comments, labels). Attributes outside the
table are kept, except: private attributes (removed unless Retain Safe Private keeps a listed one), UIDs
(replaced, unless well-known: a DICOM-registered UID value or a class/syntax/coding-scheme attribute),
and, with shifted dates, every DA/DT attribute (shifted like the listed ones).

Nothing here puts an original value into an exception message or a log line: errors say which attribute
and why, never what it held.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import uid as uids
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from medbeam.dicom.deid_table import BASIC_PROFILE, MASKED

# ---------------------------------------------------------------------------------------------------
# Options


#: `--retain` values → the PS3.15 option they stand for.
RETAIN_DATES_SHIFTED = "dates-shifted"
RETAIN_DATES = "dates"
RETAIN_UIDS = "uids"
RETAIN_DEVICE = "device"
RETAIN_INSTITUTION = "institution"
RETAIN_PATIENT = "patient-characteristics"
RETAIN_SAFE_PRIVATE = "safe-private"
RETAIN_CHOICES = (
    RETAIN_DATES_SHIFTED,
    RETAIN_DATES,
    RETAIN_UIDS,
    RETAIN_DEVICE,
    RETAIN_INSTITUTION,
    RETAIN_PATIENT,
    RETAIN_SAFE_PRIVATE,
)

#: CID 7050 De-identification Method codes (scheme DCM) for the profile and each option.
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
CODE_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
OPTION_CODES = {
    RETAIN_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    RETAIN_DATES_SHIFTED: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    RETAIN_PATIENT: ("113108", "Retain Patient Characteristics Option"),
    RETAIN_DEVICE: ("113109", "Retain Device Identity Option"),
    RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    RETAIN_INSTITUTION: ("113112", "Retain Institution Identity Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options apply on top of the Basic Profile."""

    retain: frozenset[str] = frozenset()
    clean_descriptors: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.retain) - set(RETAIN_CHOICES)
        if unknown:
            raise ValueError(f"unknown --retain {sorted(unknown)}; choose from {', '.join(RETAIN_CHOICES)}")
        if {RETAIN_DATES, RETAIN_DATES_SHIFTED} <= set(self.retain):
            raise ValueError("--retain dates and --retain dates-shifted exclude each other")
        object.__setattr__(self, "retain", frozenset(self.retain))

    def codes(self, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        result = [CODE_BASIC]
        if pixels_cleaned:
            result.append(CODE_CLEAN_PIXELS)
        if self.clean_descriptors:
            result.append(CODE_CLEAN_DESCRIPTORS)
        result += [OPTION_CODES[o] for o in RETAIN_CHOICES if o in self.retain]
        return result

    def describe(self) -> str:
        parts = ["PS3.15 E.1-1 Basic Profile"]
        parts += [f"retain {o}" for o in RETAIN_CHOICES if o in self.retain]
        if self.clean_descriptors:
            parts.append("clean descriptors")
        return "medbeam: " + ", ".join(parts)


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(int(Tag(k)) for k in keywords)


#: Retain Device Identity Option (PS3.15 E.3.2): what identifies the equipment, not the patient.
DEVICE_TAGS = _tags(
    "DeviceSerialNumber",
    "DeviceUID",
    "DeviceDescription",
    "DeviceLabel",
    "StationName",
    "DetectorID",
    "GantryID",
    "PlateID",
    "CassetteID",
    "GeneratorID",
    "ScheduledStationName",
    "ScheduledStationAETitle",
    "PerformedStationName",
    "PerformedStationAETitle",
    "PerformedLocation",
    "SourceSerialNumber",
    "TreatmentMachineName",
    "UniqueDeviceIdentifier",
    "DeviceAlternateIdentifier",
    "ManufacturerDeviceClassUID",
    "UDISequence",
    "AcquisitionDeviceProcessingDescription",
    "DateOfLastDetectorCalibration",
    "TimeOfLastDetectorCalibration",
    "XRayDetectorLabel",
)
#: Retain Institution Identity Option (E.3.3).
INSTITUTION_TAGS = _tags(
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionCodeSequence",
    "InstitutionalDepartmentTypeCodeSequence",
)
#: Retain Patient Characteristics Option (E.3.4).
PATIENT_TAGS = _tags(
    "PatientAge",
    "PatientSex",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "SmokingStatus",
    "PregnancyStatus",
    "PatientSexNeutered",
    "SpecialNeeds",
    "PatientState",
    "Allergies",
    "MedicalAlerts",
    "AdditionalPatientHistory",
    "PatientSizeCodeSequence",
)
#: Retain Safe Private Option (E.3.10): (private creator, group, element offset) known to hold no identity.
#: A deliberately short list (diffusion and rescale values of three vendors), not Table E.3.10-1 entire.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B_value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # DiffusionDirectionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # DiffusionGradientDirection
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # B_matrix
        ("GEMS_PARM_01", 0x0043, 0x39),  # b-value and others (slop_int_6..9)
        ("Philips Imaging DD 001", 0x2001, 0x03),  # Diffusion B-Factor
        ("Philips MR Imaging DD 001", 0x2005, 0x0D),  # Scale Intercept
        ("Philips MR Imaging DD 001", 0x2005, 0x0E),  # Scale Slope
    }
)

#: UIDs that identify a class, a syntax or a coding scheme, never an instance: always kept.
KEEP_UID_TAGS = _tags(
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ReferencedSOPClassUIDInFile",
    "ReferencedTransferSyntaxUIDInFile",
    "CodingSchemeUID",
    "ContextGroupExtensionCreatorUID",
    "MappingResourceUID",
    "PrivateInformationCreatorUID",
    "RelatedGeneralSOPClassUID",
    "OriginalSpecializedSOPClassUID",
    "SOPClassesInStudy",
    "SOPClassesSupported",
    "AffectedSOPClassUID",
    "RequestedSOPClassUID",
    "ReferencedRelatedGeneralSOPClassUIDInFile",
    "ImplementationClassUID",
)
CONTENT_SEQUENCE = int(Tag("ContentSequence"))
TEXT_VALUE = int(Tag("TextValue"))
PATIENT_BIRTH_DATE = int(Tag("PatientBirthDate"))
PATIENT_ID = int(Tag("PatientID"))
PATIENT_NAME = int(Tag("PatientName"))
#: Identifiers replaced by a keyed pseudonym (consistent across files) instead of emptied.
PSEUDONYM_TAGS = {
    PATIENT_ID: "patient_id",
    int(Tag("AccessionNumber")): "accession_number",
    int(Tag("StudyID")): "study_id",
}
_DESCRIPTOR = re.compile(r"(Description|Comments?|Label|Diagnos[ei]s|History|Reason|ProtocolName)")
DUMMY_TEXT = "ANONYMIZED"
DUMMY = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "CS", "UR"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
#: Date offsets are whole days in [-MAX_SHIFT_DAYS, -1]: dates move back, never into the future.
MAX_SHIFT_DAYS = 3650


class DeidError(ValueError):
    """An instance that cannot be de-identified; the message names attributes and reasons, never values."""


# ---------------------------------------------------------------------------------------------------
# Keyed, consistent replacements


class Keys:
    """HMAC-SHA256 pseudonyms under the user's secret: UIDs, identifiers and per-patient date offsets."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the de-identification key must be at least 16 bytes")
        self._secret = secret

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A valid DICOM UID under the 2.25 root (a 128-bit integer), the same for the same UID and key."""
        return "2.25." + str(int.from_bytes(self._digest("uid", value.strip(" \x00"))[:16], "big"))

    def pseudonym(self, kind: str, value: str) -> str:
        """16 characters (fits SH), letters and digits."""
        return base64.b32encode(self._digest(kind, value.strip())[:10]).decode()

    def day_offset(self, patient_id: str) -> int:
        """The patient's date shift in days, from their original PatientID."""
        return -(1 + int.from_bytes(self._digest("dates", patient_id.strip())[:8], "big") % MAX_SHIFT_DAYS)


def is_well_known_uid(value: str) -> bool:
    """A UID the standard registers (SOP classes, syntaxes, coding schemes, well-known frames)."""
    value = value.strip(" \x00")
    return value.startswith("1.2.840.10008.") or value in uids.UID_dictionary


# ---------------------------------------------------------------------------------------------------
# The walk


@dataclass
class DeidResult:
    """The de-identified dataset and what was done: counts per action and the attribute keywords per
    action (names only, never values), plus the original → pseudonym pairs (PHI: only for --mapping-out)."""

    dataset: Dataset
    actions: Counter = field(default_factory=Counter)
    attributes: dict[str, set[str]] = field(default_factory=dict)
    mapping: set[tuple[str, str, str]] = field(default_factory=set)
    day_offset: int | None = None

    def note(self, action: str, tag: int) -> None:
        self.actions[action] += 1
        self.attributes.setdefault(action, set()).add(keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")


# Action names for the audit.
REMOVED, EMPTIED, DUMMIED, UID_REPLACED, PSEUDONYMIZED = "removed", "emptied", "dummy", "uid_replaced", "pseudonymized"
DATE_SHIFTED, CLEANED, KEPT, PRIVATE_REMOVED, PRIVATE_KEPT = (
    "date_shifted",
    "cleaned",
    "kept",
    "private_removed",
    "private_kept",
)
ACTIONS = (
    REMOVED,
    EMPTIED,
    DUMMIED,
    UID_REPLACED,
    PSEUDONYMIZED,
    DATE_SHIFTED,
    CLEANED,
    KEPT,
    PRIVATE_REMOVED,
    PRIVATE_KEPT,
)


def basic_action(tag: int) -> str | None:
    """The Table E.1-1 action of a tag, repeating groups (curves, overlays) included; None if not listed."""
    action = BASIC_PROFILE.get(tag)
    if action is not None:
        return action
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gmask, emask, masked_action in MASKED:
        if group & gmask == g and element & emask == e:
            return masked_action
    return None


class _Walker:
    def __init__(self, keys: Keys, options: DeidOptions, result: DeidResult, identifying: list[str], patient_id: str):
        self.keys = keys
        self.patient_id = patient_id.strip()
        self.options = options
        self.result = result
        self.retain = options.retain
        self.identifying = identifying

    # -- the action of one element, options applied
    def action(self, tag: int, vr: str) -> str | None:
        action = basic_action(tag)
        retain = self.retain
        if action is None:
            if vr == "UI":
                return "K" if tag in KEEP_UID_TAGS or RETAIN_UIDS in retain else "U"
            if vr in ("DA", "DT") and RETAIN_DATES_SHIFTED in retain:
                return "C"
            return None
        if tag == PATIENT_BIRTH_DATE:
            return action  # no option keeps the birth date (patient age is the characteristic kept)
        if vr == "UI" and RETAIN_UIDS in retain:
            return "K"
        if vr in ("DA", "DT", "TM"):
            if RETAIN_DATES in retain:
                return "K"
            if RETAIN_DATES_SHIFTED in retain:
                return "K" if vr == "TM" else "C"
        if tag in DEVICE_TAGS and RETAIN_DEVICE in retain:
            return "K"
        if tag in INSTITUTION_TAGS and RETAIN_INSTITUTION in retain:
            return "K"
        if tag in PATIENT_TAGS and RETAIN_PATIENT in retain:
            return "K"
        if self.options.clean_descriptors and vr in ("LO", "SH", "ST", "LT", "UT", "UC"):
            keyword = keyword_for_tag(tag) or ""
            if _DESCRIPTOR.search(keyword):
                return "C"
        return action

    def walk(self, ds: Dataset, in_content: bool = False) -> None:
        private_creators: dict[int, str] = {}
        for tag in list(ds.keys()):  # noqa: SIM118 - iterating a Dataset yields elements
            tag = BaseTag(tag)
            if tag.is_private and tag.is_private_creator:
                private_creators[int(tag)] = str(ds[tag].value or "")
        kept_creators: set[int] = set()
        for tag in list(ds.keys()):  # noqa: SIM118
            tag = BaseTag(tag)
            if tag.is_private:
                if tag.is_private_creator:
                    continue
                creator_tag = (tag.group << 16) | (tag.element >> 8)
                creator = private_creators.get(creator_tag, "").strip()
                if RETAIN_SAFE_PRIVATE in self.retain and (creator, tag.group, tag.element & 0xFF) in SAFE_PRIVATE:
                    kept_creators.add(creator_tag)
                    self.result.note(PRIVATE_KEPT, tag)
                else:
                    del ds[tag]
                    self.result.note(PRIVATE_REMOVED, tag)
                continue
            if tag.element == 0:  # group lengths: pydicom recomputes nothing, so drop them
                del ds[tag]
                continue
            if not (in_content and tag == TEXT_VALUE):
                vr = _raw_vr(ds, tag)
                if vr != "SQ" and self.action(int(tag), vr) in (None, "K"):
                    self.result.note(KEPT, tag)  # kept as read: not even decoded (most of a dataset)
                    continue
            self.element(ds, ds[tag], in_content)
        for creator_tag in private_creators:
            if creator_tag not in kept_creators and creator_tag in ds:
                del ds[creator_tag]

    def element(self, ds: Dataset, elem: DataElement, in_content: bool) -> None:
        tag, vr = int(elem.tag), elem.VR
        note = self.result.note
        if in_content and tag == TEXT_VALUE:
            self._set(elem, self._clean(elem.value) if self.options.clean_descriptors else DUMMY_TEXT)
            note(CLEANED if self.options.clean_descriptors else DUMMIED, tag)
            return
        action = self.action(tag, vr)
        if action is None or action == "K":
            if vr == "SQ":
                for item in elem.value:
                    self.walk(item, in_content)
            note(KEPT, tag)
            return
        if tag in PSEUDONYM_TAGS and action not in ("X",):
            self._pseudonymize(ds, elem, PSEUDONYM_TAGS[tag])
            return
        if tag == PATIENT_NAME:
            pid = self.patient_id
            elem.value = self.keys.pseudonym("patient_id", pid) if pid else ""
            note(PSEUDONYMIZED, tag)
            return
        if vr == "SQ":
            self._sequence(ds, elem, action)
            return
        if action == "U" or (action == "X/Z/U*" and vr == "UI"):
            self._replace_uids(elem)
            return
        if action == "C":
            if vr in ("DA", "DT"):
                self._shift(elem)
            else:
                self._set(elem, self._clean(elem.value))
                note(CLEANED, tag)
            return
        if action in ("X", "X/D") and not in_content:
            del ds[tag]
            note(REMOVED, tag)
            return
        if action in ("Z", "X/Z", "X/Z/D", "X/Z/U*"):
            elem.value = None if vr not in ("OB", "OW", "UN") else b""
            note(EMPTIED, tag)
            return
        # D, Z/D, X/D (inside an SR tree, where removal would break it): a dummy value of the VR
        self._dummy(elem)
        note(DUMMIED, tag)

    def _sequence(self, ds: Dataset, elem: DataElement, action: str) -> None:
        tag = int(elem.tag)
        if tag == CONTENT_SEQUENCE:  # D: the SR tree stays, everything identifying in it is replaced
            for item in elem.value:
                self.walk(item, in_content=True)
            self.result.note(CLEANED, tag)
        elif action == "X/Z/U*":  # references: kept, their UIDs replaced like the instances they point to
            for item in elem.value:
                self.walk(item)
            self.result.note(UID_REPLACED, tag)
        elif action in ("X", "X/D"):
            del ds[tag]
            self.result.note(REMOVED, tag)
        else:  # Z, X/Z, X/Z/D, D: an empty sequence
            elem.value = Sequence([])
            self.result.note(EMPTIED, tag)

    def _replace_uids(self, elem: DataElement) -> None:
        values = elem.value if elem.VM > 1 else [elem.value]
        new = []
        for value in values:
            text = str(value or "").strip(" \x00")
            if not text or is_well_known_uid(text):
                new.append(text)
                continue
            mapped = self.keys.uid(text)
            self.result.mapping.add(("uid", text, mapped))
            new.append(mapped)
        elem.value = new if elem.VM > 1 else new[0]
        self.result.note(UID_REPLACED, int(elem.tag))

    def _pseudonymize(self, ds: Dataset, elem: DataElement, kind: str) -> None:
        text = str(elem.value or "").strip()
        if text:
            pseudonym = self.keys.pseudonym(kind, text)
            self.result.mapping.add((kind, text, pseudonym))
            elem.value = pseudonym
        self.result.note(PSEUDONYMIZED, int(elem.tag))

    def _shift(self, elem: DataElement) -> None:
        offset = self.result.day_offset
        values = elem.value if elem.VM > 1 else [elem.value]
        shifted = [shift_date(str(v or ""), elem.VR, offset or 0) for v in values]
        elem.value = shifted if elem.VM > 1 else shifted[0]
        self.result.note(DATE_SHIFTED, int(elem.tag))

    def _dummy(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr in DUMMY:
            value: object = DUMMY[vr]
        elif vr in _TEXT_VRS:
            value = DUMMY_TEXT
        elif vr in _NUMERIC_VRS:
            value = 0
        elif vr == "UI":
            self._replace_uids(elem)
            return
        else:  # binary and anything else: zero length
            value = b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else None
        elem.value = value

    def _set(self, elem: DataElement, value: object) -> None:
        elem.value = value

    def _clean(self, value: object) -> str:
        """Clean Descriptors: the text with every identifying value of this instance blanked out."""
        text = str(value or "")
        for needle in self.identifying:
            text = re.sub(re.escape(needle), "***", text, flags=re.IGNORECASE)
        return text


def _raw_vr(ds: Dataset, tag: BaseTag) -> str:
    """An element's VR without decoding its value: as read (explicit VR), else the dictionary's."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr and vr != "UN":
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def shift_date(value: str, vr: str, days: int) -> str:
    """A DA or DT value moved by `days`; a value that is not a valid date becomes empty (never kept)."""
    text = value.strip()
    if not text:
        return ""
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    out = f"{day.year:04d}{day.month:02d}{day.day:02d}"
    return out if vr == "DA" else out + text[8:]


def identifying_strings(ds: Dataset) -> list[str]:
    """Names and identifiers this instance holds (PN values and their parts, IDs, addresses, institutions):
    what Clean Descriptors removes from free text. Longest first, 3 characters or more."""
    found: set[str] = set()

    def visit(d: Dataset) -> None:
        for elem in d.iterall():
            tag = int(elem.tag)
            if elem.VR == "PN" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                for v in values:
                    text = str(v)
                    found.add(text)
                    found.update(p for p in re.split(r"[\^=\s]+", text) if p)
            elif elem.VR in ("LO", "SH", "ST") and basic_action(tag) is not None and elem.value:
                keyword = keyword_for_tag(tag) or ""
                if not _DESCRIPTOR.search(keyword):
                    values = elem.value if elem.VM > 1 else [elem.value]
                    found.update(str(v).strip() for v in values)

    visit(ds)
    return sorted((s for s in found if len(s) >= 3), key=lambda s: (-len(s), s))


def deidentify(ds: Dataset, keys: Keys, options: DeidOptions, *, pixels_cleaned: bool = False) -> DeidResult:
    """De-identify `ds` in place and return it with what was done.

    Raises DeidError for an instance that must not be written (no SOP Instance UID, study or series).
    """
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip(" \x00"):
            raise DeidError(f"no {keyword}: the de-identified copy could not be placed or referenced")
    result = DeidResult(ds)
    patient_id = str(ds.get("PatientID", "") or "")
    if RETAIN_DATES_SHIFTED in options.retain:
        result.day_offset = keys.day_offset(patient_id)
        result.mapping.add(("date_offset_days", patient_id.strip(), str(result.day_offset)))
    identifying = identifying_strings(ds) if options.clean_descriptors else []
    walker = _Walker(keys, options, result, identifying, patient_id)
    walker.walk(ds)
    _file_meta(ds)
    _record_method(ds, options, pixels_cleaned)
    return result


def _file_meta(ds: Dataset) -> None:
    """A fresh file meta group: the new instance UID, the same transfer syntax, nothing of the source."""
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    else:
        implicit, little = getattr(ds, "original_encoding", (False, True))
        meta.TransferSyntaxUID = (
            uids.ImplicitVRLittleEndian
            if implicit
            else (uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian)
        )
    meta.ImplementationClassUID = uids.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDBEAM_DEID"
    ds.file_meta = meta


def _record_method(ds: Dataset, options: DeidOptions, pixels_cleaned: bool) -> None:
    """PatientIdentityRemoved, DeidentificationMethod and its code sequence, as PS3.15 E.1 asks."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = options.describe()[:64]
    codes = Sequence()
    for value, meaning in options.codes(pixels_cleaned):
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if RETAIN_DATES in options.retain:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif RETAIN_DATES_SHIFTED in options.retain:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    if pixels_cleaned:
        ds.BurnedInAnnotation = "NO"


def new_identity(ds: Dataset) -> tuple[str, str, str]:
    """(study, series, instance) UIDs of a de-identified dataset: where its file goes."""
    return (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def attribute_lists(result: DeidResult, actions: Iterable[str]) -> dict[str, list[str]]:
    return {a: sorted(result.attributes.get(a, ())) for a in actions}
