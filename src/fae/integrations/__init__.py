"""Bridges to other libraries' model interfaces; each sub-module imports its peer library only when
it is itself imported (``fae.integrations.diffusers`` needs the optional ``diffusers``)."""
