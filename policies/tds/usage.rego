# Whether one transfer under an agreement may start now: not revoked, inside its window,
# under its count and byte limits, consent still in force for personal data, the grant
# still current for public data, never core data; important data only in the permitted
# fields, masked as the agreement says.
package tds.usage

import data.tds.common
import data.tds.obligations
import rego.v1

contract := input.contract

deny contains reason if some reason in common.input_denials

deny contains "core_data" if common.is_core

deny contains "agreement_revoked" if contract.revoked

deny contains "agreement_revoked" if input.context.revoked

deny contains "agreement_not_yet_valid" if common.now < contract.valid_from_ns

deny contains "agreement_expired" if common.now >= contract.valid_until_ns

deny contains "transfer_limit_reached" if {
	contract.max_transfers > 0
	input.context.transfers_used >= contract.max_transfers
}

deny contains "byte_limit_reached" if {
	contract.max_bytes > 0
	input.context.bytes_used + object.get(input.context, "request_bytes", 0) > contract.max_bytes
}

deny contains reason if {
	common.is_personal
	some reason in common.consent_denials(contract.purpose)
}

deny contains reason if {
	common.is_public
	some reason in common.grant_denials(contract.purpose)
}

# Structured important data is delivered only in the fields the agreement permits; an
# opaque file (no fields) has nothing to project.
deny contains "no_field_policy" if {
	common.is_important
	count(input.resource.fields) > 0
	count(object.get(contract, "permitted_fields", [])) == 0
}

deny contains "field_not_in_product" if {
	common.is_important
	some field in object.get(contract, "permitted_fields", [])
	not field in input.resource.fields
}

deny contains reason if some reason in common.provider_denials

field_policy := {
	"permitted_fields": contract.permitted_fields,
	"masks": object.get(contract, "masks", {}),
} if {
	common.is_important
	count(input.resource.fields) > 0
} else := {}

decision := common.decision(deny, object.union({"obligations": obligations.for_contract}, field_policy))
