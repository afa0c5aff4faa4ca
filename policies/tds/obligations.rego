# Obligations returned with a decision, for the consumer's connector to enforce.
package tds.obligations

import data.tds.common
import rego.v1

# At contract time: what the offer asks for, and what the agreement rests on: the
# authorised-operation grant that covers public data, the consent for personal data.
for_offer := object.union(object.union(object.get(input.offer, "obligations", {}), personal), basis)

basis := object.union(grant_basis, consent_basis)

# The first grant (by id) that lets the subject operate this public resource for purpose.
grant_basis := {"operation_grant": ids[0]} if {
	common.is_public
	ids := sort([grant.id |
		some grant in common.grants
		is_string(grant.id)
		common.grant_valid_for(input.contract.purpose, grant)
	])
	count(ids) > 0
} else := {}

consent_basis := {"consent": common.consent.id} if {
	common.is_personal
	is_string(common.consent.id)
} else := {}

# At transfer time: what the agreement fixed, plus delete-after capped by the agreement's
# end, and deletion on consent withdrawal for personal data.
# A revoked agreement's data is deleted unless the agreement says otherwise.
for_contract := object.union(object.union(revocation_default, fixed), object.union(personal, delete_after)) if {
	contract := input.contract
	fixed := object.get(contract, "obligations", {})
	until := contract.valid_until_ns
	delete_after := {"delete_after_ns": min({object.get(fixed, "delete_after_ns", until), until})}
}

revocation_default := {"delete_on_revocation": true}

personal := {"delete_on_consent_withdrawal": true} if common.is_personal else := {}
