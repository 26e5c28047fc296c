"""Fuzz target ``renewal``: what the cell answers to an agent's certificate renewal.

The agent's :class:`~lattice.adapters.agent_renewal.CertificateRenewer` sends a CSR for a key it
just made and installs the ``CertificateIssued`` it gets back. The answers here are arbitrary:
success or not, any text as certificate and bundle, real certificates for the wrong key, the
wrong cluster, another CA, an expired one, or a good one.

Invariant: a renewal either installs a certificate that is for the new key, names the cluster,
chains to the returned bundle and is valid, or raises one of the errors
:meth:`CertificateRenewer.run` turns into a logged retry (``RenewalRefused``, ``ValueError``),
leaving the current identity in place; never another exception.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from lattice.adapters import agent_renewal, cell_ca, pki
from lattice.proto.agent.v1 import agent_pb2 as pb
from tests.fuzz.plugin import fuzz

CLUSTER = "c1"
CA = cell_ca.CellCertificateAuthority.generate("fuzz-cell-ca")
OTHER_CA = cell_ca.CellCertificateAuthority.generate("another-ca")
_KEY = ec.generate_private_key(ec.SECP256R1())
CURRENT = agent_renewal.AgentCredentials(
    cert_pem=CA.sign_agent_csr(pki.csr_to_pem(pki.new_csr(_KEY, CLUSTER)).decode(), CLUSTER).encode(),
    key_pem=pki.key_to_pem(_KEY),
    ca_pem=CA.ca_bundle_pem().encode(),
)


def _signed(csr_pem: str, how: str) -> tuple[str, str]:
    """A certificate (and bundle) for ``csr_pem`` made in one of several right or wrong ways."""
    if how == "good":
        return CA.sign_agent_csr(csr_pem, CLUSTER), CA.ca_bundle_pem()
    if how == "other-ca":
        return OTHER_CA.sign_agent_csr(csr_pem, CLUSTER), CA.ca_bundle_pem()
    if how == "other-ca-and-bundle":
        return OTHER_CA.sign_agent_csr(csr_pem, CLUSTER), OTHER_CA.ca_bundle_pem()
    if how == "expired":
        old = cell_ca.CellCertificateAuthority(CA.authority, agent_cert_ttl=dt.timedelta(minutes=-1))
        return old.sign_agent_csr(csr_pem, CLUSTER), CA.ca_bundle_pem()
    if how == "wrong-key":
        other = ec.generate_private_key(ec.SECP256R1())
        return CA.sign_agent_csr(
            pki.csr_to_pem(pki.new_csr(other, CLUSTER)).decode(), CLUSTER
        ), CA.ca_bundle_pem()
    other_csr = pki.csr_to_pem(pki.new_csr(ec.generate_private_key(ec.SECP256R1()), "c2")).decode()
    return CA.sign_agent_csr(other_csr, "c2"), CA.ca_bundle_pem()  # another cluster


HOW = ["good", "other-ca", "other-ca-and-bundle", "expired", "wrong-key", "other-cluster", "text"]
texts = st.one_of(
    st.text(max_size=200),
    st.just(CA.ca_bundle_pem()),
    st.just("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
)


@given(
    success=st.booleans(),
    how=st.sampled_from(
        ["good", "other-ca", "other-ca-and-bundle", "expired", "wrong-key", "other-cluster", "text"]
    ),
    certificate=texts,
    bundle=texts,
    request_id=st.sampled_from(["match", "other", ""]),
)
@fuzz("renewal.answers", examples=150)
def test_renewal_answers(success: bool, how: str, certificate: str, bundle: str, request_id: str) -> None:
    renewer = agent_renewal.CertificateRenewer(CLUSTER, CURRENT, None, rand=lambda: 0.5, timeout=0.05)

    async def send(message: pb.AgentMessage) -> None:
        request = message.certificate_renewal
        issued = pb.CertificateIssued(request_id=request.request_id, success=success)
        if how == "text":
            issued.certificate, issued.ca_bundle = certificate, bundle
        else:
            issued.certificate, issued.ca_bundle = _signed(request.csr, how)
        if request_id == "other":
            issued.request_id = "someone-else"
        elif request_id == "":
            issued.request_id = ""
        asyncio.get_running_loop().call_soon(renewer.on_issued, issued)

    async def attempt() -> BaseException | None:
        try:
            await renewer.renew_once(send)
        except (agent_renewal.RenewalRefused, ValueError, TimeoutError) as exc:
            return exc
        return None

    failure = asyncio.run(attempt())
    if failure is None:
        assert (success, how, request_id) == (True, "good", "match")
        installed = x509.load_pem_x509_certificate(renewer.credentials.cert_pem)
        assert installed.subject.rfc4514_string() == f"CN={CLUSTER}"
        assert renewer.credentials.key_pem != CURRENT.key_pem
    else:
        assert renewer.credentials == CURRENT
        if request_id != "match":
            assert isinstance(failure, TimeoutError)
