"""What predict's PATH holds (files, a zip's entries, DICOM series) and the kinds that score them."""
