# Who sees a product in a catalog: the owner always; others by role, attributes and
# explicit allow-lists the provider set. Core data is never listed.
#
# One product (catalog.read: a product shown on its own) is decided by `decision`; a page
# of a catalog (catalog.list: input.resources) by `list_decision`, in one evaluation that
# returns the ids the subject may see, by the same rules.
package tds.access

import data.tds.common
import rego.v1

deny := denials(input.resource)

# Why the subject may not see resource (empty: it may).
denials(resource) := {reason |
	some reason in ["core_data", "role_not_allowed", "not_on_allow_list", "attribute_mismatch"]
	denied(resource, reason)
}

denied(resource, "core_data") if resource.grade == "core"

denied(resource, "role_not_allowed") if {
	not owns(resource)
	roles := object.get(object.get(resource, "access", {}), "roles", [])
	count(roles) > 0
	not input.subject.role in roles
}

denied(resource, "not_on_allow_list") if {
	not owns(resource)
	allowed := object.get(object.get(resource, "access", {}), "allow_list", [])
	count(allowed) > 0
	not input.subject.id in allowed
}

denied(resource, "attribute_mismatch") if {
	not owns(resource)
	some name, value in object.get(object.get(resource, "access", {}), "attrs", {})
	object.get(input.subject.attrs, name, null) != value
}

owns(resource) if input.subject.id == resource.owner

decision := common.decision(deny, {})

# The ids among input.resources the subject may see: at once those of the subject's own
# or without access rules (most of a catalog), the others by their denials. Array
# comprehensions: about half what a partial set costs per resource in rego-cpp.
visible_ids := array.concat(
	[r.id | r := input.resources[_]; r.grade != "core"; unrestricted(r)],
	[r.id | r := input.resources[_]; not unrestricted(r); count(denials(r)) == 0],
)

unrestricted(resource) if owns(resource)

unrestricted(resource) if resource.access == {"roles": [], "allow_list": [], "attrs": {}}

list_decision := common.decision(set(), {"visible_ids": visible_ids})
