"""CRM connectors behind one interface (``CrmClient``)."""

from handoff.crm.base import CrmClient, CrmError

__all__ = ["CrmClient", "CrmError"]
