# Whether one transfer under an agreement may start now: not revoked, inside its window,
# under its count and byte limits, consent still in force for personal data, the grant
# still current for public data, never core data; important data only in the permitted
# fields, masked as the agreement says.
#
# This runs before every transfer, so it is written for speed as well as for reading:
# bodies bind the input sections they read to locals once (rego-cpp resolves a local
# several times faster than an `input.` path), and the agreement's checks are one table.
package tds.usage

import data.tds.common
import data.tds.obligations
import rego.v1

deny contains "core_data" if common.is_core

deny contains reason if some reason in agreement_denials

deny contains reason if {
	common.is_personal
	some reason in common.consent_denials(input.contract.purpose)
}

deny contains reason if {
	common.is_public
	some reason in common.grant_denials(input.contract.purpose)
}

deny contains reason if some reason in field_denials

deny contains reason if some reason in common.provider_denials

# Each reason beside the condition that gives it.
agreement_denials := {reason |
	contract := input.contract
	context := input.context
	now := context.now_ns
	requested := context.bytes_used + object.get(context, "request_bytes", 0)
	some [reason, applies] in [
		["agreement_revoked", contract.revoked == true],
		["agreement_revoked", object.get(context, "revoked", false) == true],
		["agreement_not_yet_valid", now < contract.valid_from_ns],
		["agreement_expired", now >= contract.valid_until_ns],
		["transfer_limit_reached", over_limit(contract.max_transfers, context.transfers_used + 1)],
		["byte_limit_reached", over_limit(contract.max_bytes, requested)],
	]
	applies
}

# A limit of 0 means none.
over_limit(limit, wanted) := wanted > limit if limit > 0 else := false

# Structured important data is delivered only in the fields the agreement permits; an
# opaque file (no fields) has nothing to project.
field_denials contains "no_field_policy" if {
	structured_important
	count(object.get(input.contract, "permitted_fields", [])) == 0
}

field_denials contains "field_not_in_product" if {
	structured_important
	fields := input.resource.fields
	some field in object.get(input.contract, "permitted_fields", [])
	not field in fields
}

structured_important if {
	common.is_important
	count(input.resource.fields) > 0
}

field_policy := {"permitted_fields": contract.permitted_fields, "masks": object.get(contract, "masks", {})} if {
	structured_important
	contract := input.contract
} else := {}

decision := common.decision(deny, object.union({"obligations": obligations.for_contract}, field_policy))
