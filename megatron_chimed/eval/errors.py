"""The one error bad evaluation data raises."""


class DataFormatError(ValueError):
    """A data or scale file does not match its format; the message names the file, the line
    (or row / item) and the field, so the user can fix the file without reading our code."""
