"""A small DICOM corpus with identifying values planted everywhere a real one hides, for the de-identification
tests: a CT series (3 slices, one frame of reference), an RT structure set referencing it, a Basic Text SR
whose content tree names people, an ultrasound image with a name drawn into its pixels, a corrupt file, a
file without SOP Instance UID and an ultrasound whose pixels cannot be decoded.

`PLANTED` lists every planted string (names, IDs, addresses, UIDs …): none may survive de-identification
in any output byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

PATIENT_NAME = "Quixote^Dulcinea"
PATIENT_ID = "PIDZX81QQ4455"
US_PATIENT_NAME = "Panzafarr^Sanchoqq"
US_PATIENT_ID = "PIDUS77KK0101"
BURNED_NAME = "QUIXOTE"
ROOT = "1.2.826.0.1.3680043.8.498.4242"
STUDY = f"{ROOT}.1"
SERIES = f"{ROOT}.2"
FRAME = f"{ROOT}.3"
CT_SOPS = [f"{ROOT}.10.{i}" for i in range(1, 4)]
RT_SERIES, RT_SOP = f"{ROOT}.20", f"{ROOT}.21"
SR_SERIES, SR_SOP = f"{ROOT}.30", f"{ROOT}.31"
US_STUDY, US_SERIES, US_SOP = f"{ROOT}.40", f"{ROOT}.41", f"{ROOT}.42"
PLANTED = [
    "Quixote",
    "Dulcinea",
    PATIENT_ID,
    "Panzafarr",
    "Sanchoqq",
    US_PATIENT_ID,
    "19561103",  # birth date
    "Wisteria Lane",
    "Strangelove",
    "Merkwurdig",
    "Operatorius",
    "Saint Elsewhere",
    "Rue Secrete",
    "CTSTATIONXQ9",
    "SERIALZZ0042",
    "ACC99887766",
    "STUDYQ4242",
    "REQPROC7731",
    "SPS5521XY",
    "OTHERPID3141",
    "PrivateSecretLopez",
    "Readingdoc",
    "Verifierson",
    "Tel5550199QQ",
    "Military Colonel Zed",
    "Issuer of Atlantis",
    ROOT,  # every original UID starts with it
]
CT_SOP_CLASS = uids.CTImageStorage
RT_SOP_CLASS = uids.RTStructureSetStorage
SR_SOP_CLASS = uids.BasicTextSRStorage
US_SOP_CLASS = uids.UltrasoundImageStorage


def _base(sop_class: str, sop: str, series: str, modality: str, study: str = STUDY) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "CTSTATIONXQ9"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = "Issuer of Atlantis"
    ds.PatientBirthDate = "19561103"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.PatientAddress = "12 Wisteria Lane, Springfield"
    ds.PatientTelephoneNumbers = "Tel5550199QQ"
    ds.MilitaryRank = "Military Colonel Zed"
    ds.PatientComments = "Quixote prefers mornings"
    ds.ReferringPhysicianName = "Strangelove^Merkwurdig"
    ds.NameOfPhysiciansReadingStudy = "Readingdoc^Anna"
    ds.OperatorsName = "Operatorius^Max"
    ds.InstitutionName = "Saint Elsewhere Hospital"
    ds.InstitutionAddress = "1 Rue Secrete, Paris"
    ds.StationName = "CTSTATIONXQ9"
    ds.DeviceSerialNumber = "SERIALZZ0042"
    ds.Manufacturer = "ACME Imaging"
    ds.AccessionNumber = "ACC99887766"
    ds.StudyID = "STUDYQ4242"
    ds.StudyDate = "20210315"
    ds.StudyTime = "101500"
    ds.SeriesDate = "20210315"
    ds.ContentDate = "20210316"
    ds.StudyDescription = "Chest CT for Quixote"
    ds.SeriesDescription = "Series of Dulcinea"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    request = Dataset()
    request.RequestedProcedureID = "REQPROC7731"
    request.ScheduledProcedureStepID = "SPS5521XY"
    ds.RequestAttributesSequence = Sequence([request])
    ref_patient = Dataset()
    ref_patient.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    ref_patient.ReferencedSOPInstanceUID = f"{ROOT}.99"
    ds.ReferencedPatientSequence = Sequence([ref_patient])
    other = Dataset()
    other.PatientID = "OTHERPID3141"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "PrivateSecretLopez")
    return ds


def _pixels(ds: Dataset, array: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    ds.Rows, ds.Columns = array.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = array.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
    ds.PixelData = array.tobytes()


def ct_slices() -> list[Dataset]:
    result = []
    for i, sop in enumerate(CT_SOPS):
        ds = _base(CT_SOP_CLASS, sop, SERIES, "CT")
        ds.FrameOfReferenceUID = FRAME
        ds.InstanceNumber = i + 1
        ds.ImageComments = "call Dr Strangelove"
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        rng = np.random.default_rng(i)
        _pixels(ds, (rng.integers(0, 2000, (48, 64)) + i * 10).astype(np.int16))
        if i > 0:  # slices reference the first one
            ref = Dataset()
            ref.ReferencedSOPClassUID = CT_SOP_CLASS
            ref.ReferencedSOPInstanceUID = CT_SOPS[0]
            ds.ReferencedImageSequence = Sequence([ref])
        result.append(ds)
    return result


def rt_structure_set() -> Dataset:
    ds = _base(RT_SOP_CLASS, RT_SOP, RT_SERIES, "RTSTRUCT")
    ds.StructureSetLabel = "ROI of Quixote"
    ds.StructureSetName = "Dulcinea contours"
    ds.StructureSetDate = "20210317"
    ds.StructureSetTime = "120000"
    contour_images = Sequence()
    for sop in CT_SOPS:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_SOP_CLASS
        item.ReferencedSOPInstanceUID = sop
        contour_images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = SERIES
    series.ContourImageSequence = contour_images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = STUDY
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = FRAME
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = FRAME
    roi.ROIName = "Quixote lesion"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    return ds


def _content(value_type: str, meaning: str, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121106", "DCM", meaning
    item.ConceptNameCodeSequence = Sequence([name])
    for key, value in values.items():
        setattr(item, key, value)
    return item


def structured_report() -> Dataset:
    ds = _base(SR_SOP_CLASS, SR_SOP, SR_SERIES, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Verifierson^Paul"
    observer.VerifyingOrganization = "Saint Elsewhere Hospital"
    observer.VerificationDateTime = "20210318120000"
    ds.VerifyingObserverSequence = Sequence([observer])
    evidence_sop = Dataset()
    evidence_sop.ReferencedSOPClassUID = CT_SOP_CLASS
    evidence_sop.ReferencedSOPInstanceUID = CT_SOPS[1]
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = SERIES
    evidence_series.ReferencedSOPSequence = Sequence([evidence_sop])
    evidence = Dataset()
    evidence.StudyInstanceUID = STUDY
    evidence.ReferencedSeriesSequence = Sequence([evidence_series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    image_ref = Dataset()
    image_ref.ReferencedSOPClassUID = CT_SOP_CLASS
    image_ref.ReferencedSOPInstanceUID = CT_SOPS[1]
    inner = _content("PNAME", "Person observer", PersonName="Strangelove^Merkwurdig")
    ds.ContentSequence = Sequence(
        [
            inner,
            _content("TEXT", "Finding", TextValue="Quixote has a nodule; seen by Dr Strangelove"),
            _content("DATE", "Date", Date="20210318"),
            _content("IMAGE", "Image", ReferencedSOPSequence=Sequence([image_ref])),
        ]
    )
    return ds


def ultrasound_with_burned_name() -> Dataset:
    from PIL import Image, ImageDraw, ImageFont

    ds = _base(US_SOP_CLASS, US_SOP, US_SERIES, "US", study=US_STUDY)
    ds.PatientName = US_PATIENT_NAME
    ds.PatientID = US_PATIENT_ID
    ds.BurnedInAnnotation = "YES"
    image = Image.new("L", (320, 240), 20)
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 110, 260, 230), fill=120)  # "anatomy"
    draw.text((20, 20), BURNED_NAME, fill=255, font=ImageFont.load_default(size=40))
    _pixels(ds, np.asarray(image, dtype=np.uint8))
    return ds


#: Where the name is drawn (left, top, right, bottom), generously.
BURNED_BOX = (15, 15, 200, 75)


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def build_corpus(root: Path, *, bad: bool = True) -> dict[str, Path]:
    """Write the corpus under `root`; returns name → path (bad files included with `bad`)."""
    paths: dict[str, Path] = {}
    for i, ds in enumerate(ct_slices()):
        paths[f"ct{i}"] = write(ds, root / "ct" / f"slice{i}.dcm")
    paths["rt"] = write(rt_structure_set(), root / "rt" / "rtstruct.dcm")
    paths["sr"] = write(structured_report(), root / "sr" / "report.dcm")
    paths["us"] = write(ultrasound_with_burned_name(), root / "us" / "us.dcm")
    if bad:
        paths["corrupt"] = root / "bad" / "corrupt.dcm"
        paths["corrupt"].parent.mkdir(parents=True, exist_ok=True)
        paths["corrupt"].write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
        no_uid = ct_slices()[0]
        no_uid.SOPInstanceUID = f"{ROOT}.77"  # set, then removed: file meta keeps a planted UID too
        del no_uid.SOPInstanceUID
        paths["no_uid"] = write_raw(no_uid, root / "bad" / "no_sop_uid.dcm")
        broken = ultrasound_with_burned_name()  # flagged for OCR, but its pixels cannot be decoded
        broken.SOPInstanceUID = f"{ROOT}.88"
        broken.PixelData = broken.PixelData[:5000]
        paths["bad_pixels"] = write(broken, root / "bad" / "us_bad_pixels.dcm")
    return paths


def write_raw(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)
    return path
