# Who sees a product in a catalog: the owner always; others by role, attributes and
# explicit allow-lists the provider set. Core data is never listed.
package tds.access

import data.tds.common
import rego.v1

rules := object.get(input.resource, "access", {})

deny contains "core_data" if common.is_core

deny contains "role_not_allowed" if {
	not owner
	roles := object.get(rules, "roles", [])
	count(roles) > 0
	not input.subject.role in roles
}

deny contains "not_on_allow_list" if {
	not owner
	allowed := object.get(rules, "allow_list", [])
	count(allowed) > 0
	not input.subject.id in allowed
}

deny contains "attribute_mismatch" if {
	not owner
	some name, value in object.get(rules, "attrs", {})
	object.get(input.subject.attrs, name, null) != value
}

owner if input.subject.id == input.resource.owner

decision := common.decision(deny, {})
