# Who may contract for an offer, for which purpose; important data needs approval; public
# data only under a current authorised-operation grant covering it (term <= 5 years);
# personal data only with the individual's consent.
package tds.contract

import data.tds.access
import data.tds.common
import data.tds.obligations
import rego.v1

purpose := input.contract.purpose

deny contains reason if some reason in access.deny

deny contains "purpose_not_offered" if not purpose in input.offer.purposes

deny contains "offer_not_yet_valid" if common.now < input.offer.valid_from_ns

deny contains "offer_expired" if common.now >= input.offer.valid_until_ns

deny contains "contract_with_self" if input.subject.id == input.resource.owner

deny contains reason if {
	common.is_public
	some reason in common.grant_denials(purpose)
}

deny contains reason if {
	common.is_personal
	some reason in common.consent_denials(purpose)
}

deny contains reason if some reason in common.provider_denials

# Important data (重要数据) waits for the provider's explicit approval of each contract.
default needs_approval := false

needs_approval if common.is_important

# Whether the access policy lets the subject see the product at all: when it does not,
# the connector answers as if the product did not exist (one decision, not two).
visible := count(access.deny) == 0

decision := common.decision(deny, {
	"needs_approval": needs_approval,
	"obligations": obligations.for_offer,
	"visible": visible,
})
