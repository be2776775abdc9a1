"""Adapters from hfspec to other systems (installed as ``hfspec.integrations``)."""
