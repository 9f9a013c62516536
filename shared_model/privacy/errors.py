"""The error raised for privacy settings that would not give the guarantee they claim."""


class PrivacyConfigError(ValueError):
    """A configuration that would not give the DP guarantee it claims."""
