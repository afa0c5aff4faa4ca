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

# The ids among input.resources the subject may see: at once those without access rules
# (most of a catalog; core data never), the others by their denials. Array comprehensions
# and an inline comparison: in rego-cpp, a partial set or a helper rule per resource cost
# about twice as much.
visible_ids := array.concat(
	[r.id | r := input.resources[_]; r.grade != "core"; r.access == no_rules],
	[r.id | r := input.resources[_]; r.access != no_rules; count(denials(r)) == 0],
)

no_rules := {"roles": [], "allow_list": [], "attrs": {}}

list_decision := common.decision(set(), {"visible_ids": visible_ids})
