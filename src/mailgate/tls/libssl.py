"""The libssl/libcrypto calls Python's `ssl` module lacks, made on the very library `_ssl` is linked with.

Only the rest of `mailgate.tls` uses this module. It finds the `SSL_CTX*` behind an `ssl.SSLContext` and the
`SSL*` behind an `ssl.SSLObject` and declares the C functions, constants and callback types nginx's TLS
setup needs. Importing it fails with `LibsslMismatchError` when the library it would load is not the one
`_ssl` uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ssl
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_long, c_uint, c_uint64, c_ulong, c_void_p
from dataclasses import dataclass
from typing import Any


class LibsslMismatchError(ImportError):
    """The libssl found for ctypes is not the one Python's `_ssl` module is linked with."""


def _mapped_library(stem: str) -> str | None:
    """The path of an already loaded shared library (by file-name stem), from this process's memory map."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if path.startswith("/") and path.rsplit("/", 1)[-1].startswith(stem + ".so"):
                    return path
    except OSError:
        return None
    return None


def _load(stem: str, name: str) -> ctypes.CDLL:
    path = _mapped_library(stem) or ctypes.util.find_library(name)
    if path is None:
        raise LibsslMismatchError(f"mailgate: cannot find {stem}, the library Python's ssl module uses")
    return ctypes.CDLL(path)


crypto = _load("libcrypto", "crypto")
libssl = _load("libssl", "ssl")


def _declare(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)


_LIBCRYPTO: list[tuple[Any, ...]] = [
    ("OpenSSL_version_num", c_ulong),
    ("ERR_get_error", c_ulong),
    ("ERR_peek_error", c_ulong),
    ("ERR_peek_last_error", c_ulong),
    ("ERR_clear_error", None),
    ("ERR_peek_error_data", c_ulong, POINTER(c_char_p), POINTER(c_int)),
    ("ERR_peek_last_error_data", c_ulong, POINTER(c_char_p), POINTER(c_int)),
    ("ERR_error_string_n", None, c_ulong, c_char_p, ctypes.c_size_t),
    ("BIO_new_file", c_void_p, c_char_p, c_char_p),
    ("BIO_new_mem_buf", c_void_p, c_void_p, c_int),
    ("BIO_s_mem", c_void_p),
    ("BIO_new", c_void_p, c_void_p),
    ("BIO_free", c_int, c_void_p),
    ("BIO_ctrl", c_long, c_void_p, c_int, c_long, c_void_p),
    ("BIO_read", c_int, c_void_p, c_void_p, c_int),
    ("PEM_read_bio_X509_AUX", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("PEM_read_bio_X509", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("PEM_read_bio_X509_CRL", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("PEM_read_bio_PrivateKey", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("PEM_read_bio_Parameters", c_void_p, c_void_p, c_void_p),
    ("PEM_write_bio_X509", c_int, c_void_p, c_void_p),
    ("X509_free", None, c_void_p),
    ("X509_CRL_free", None, c_void_p),
    ("EVP_PKEY_free", None, c_void_p),
    ("X509_digest", c_int, c_void_p, c_void_p, c_void_p, POINTER(c_uint)),
    ("X509_NAME_digest", c_int, c_void_p, c_void_p, c_void_p, POINTER(c_uint)),
    ("X509_get_subject_name", c_void_p, c_void_p),
    ("X509_get_issuer_name", c_void_p, c_void_p),
    ("X509_get_serialNumber", c_void_p, c_void_p),
    ("X509_get_signature_nid", c_int, c_void_p),
    ("X509_get0_pubkey", c_void_p, c_void_p),
    ("X509_NAME_dup", c_void_p, c_void_p),
    ("X509_NAME_free", None, c_void_p),
    ("X509_NAME_cmp", c_int, c_void_p, c_void_p),
    ("X509_NAME_print_ex", c_int, c_void_p, c_void_p, c_int, c_ulong),
    ("X509_STORE_add_cert", c_int, c_void_p, c_void_p),
    ("X509_STORE_add_crl", c_int, c_void_p, c_void_p),
    ("X509_STORE_set_flags", c_int, c_void_p, c_ulong),
    ("X509_verify_cert_error_string", c_char_p, c_long),
    ("i2d_X509", c_int, c_void_p, POINTER(c_void_p)),
    ("i2a_ASN1_INTEGER", c_int, c_void_p, c_void_p),
    ("OBJ_nid2sn", c_char_p, c_int),
    ("EVP_PKEY_get_base_id", c_int, c_void_p),
    ("EVP_PKEY_get_bits", c_int, c_void_p),
    ("OPENSSL_sk_new_null", c_void_p),
    ("OPENSSL_sk_push", c_int, c_void_p, c_void_p),
    ("OPENSSL_sk_num", c_int, c_void_p),
    ("OPENSSL_sk_value", c_void_p, c_void_p, c_int),
    ("OPENSSL_sk_free", None, c_void_p),
    ("EVP_sha1", c_void_p),
    ("EVP_sha256", c_void_p),
    ("EVP_aes_128_cbc", c_void_p),
    ("EVP_aes_256_cbc", c_void_p),
    ("EVP_CIPHER_get_iv_length", c_int, c_void_p),
    ("EVP_EncryptInit_ex", c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("EVP_DecryptInit_ex", c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("HMAC_Init_ex", c_int, c_void_p, c_void_p, c_int, c_void_p, c_void_p),
    ("RAND_bytes", c_int, c_void_p, c_int),
    ("ENGINE_by_id", c_void_p, c_char_p),
    ("ENGINE_load_private_key", c_void_p, c_void_p, c_char_p, c_void_p, c_void_p),
    ("ENGINE_free", c_int, c_void_p),
    ("UI_UTIL_wrap_read_pem_callback", c_void_p, c_void_p, c_int),
    ("UI_destroy_method", None, c_void_p),
    ("OSSL_STORE_open", c_void_p, c_char_p, c_void_p, c_void_p, c_void_p, c_void_p),
    ("OSSL_STORE_load", c_void_p, c_void_p),
    ("OSSL_STORE_eof", c_int, c_void_p),
    ("OSSL_STORE_error", c_int, c_void_p),
    ("OSSL_STORE_close", c_int, c_void_p),
    ("OSSL_STORE_INFO_get_type", c_int, c_void_p),
    ("OSSL_STORE_INFO_get1_PKEY", c_void_p, c_void_p),
    ("OSSL_STORE_INFO_free", None, c_void_p),
    ("CRYPTO_get_ex_new_index", c_int, c_int, c_long, c_void_p, c_void_p, c_void_p, c_void_p),
]

_LIBSSL: list[tuple[Any, ...]] = [
    ("OPENSSL_init_ssl", c_int, c_uint64, c_void_p),
    ("TLS_server_method", c_void_p),
    ("SSL_CTX_new", c_void_p, c_void_p),
    ("SSL_CTX_free", None, c_void_p),
    ("SSL_CTX_ctrl", c_long, c_void_p, c_int, c_long, c_void_p),
    ("SSL_CTX_callback_ctrl", c_long, c_void_p, c_int, c_void_p),
    ("SSL_CTX_get_options", c_uint64, c_void_p),
    ("SSL_CTX_set_options", c_uint64, c_void_p, c_uint64),
    ("SSL_CTX_clear_options", c_uint64, c_void_p, c_uint64),
    ("SSL_CTX_get_security_level", c_int, c_void_p),
    ("SSL_CTX_set_security_level", None, c_void_p, c_int),
    ("SSL_CTX_set_cipher_list", c_int, c_void_p, c_char_p),
    ("SSL_CTX_use_certificate", c_int, c_void_p, c_void_p),
    ("SSL_CTX_use_PrivateKey", c_int, c_void_p, c_void_p),
    ("SSL_CTX_set_verify", None, c_void_p, c_int, c_void_p),
    ("SSL_CTX_set_verify_depth", None, c_void_p, c_int),
    ("SSL_CTX_get_cert_store", c_void_p, c_void_p),
    ("SSL_CTX_set_client_CA_list", None, c_void_p, c_void_p),
    ("SSL_CTX_get_client_CA_list", c_void_p, c_void_p),
    ("SSL_CTX_set0_tmp_dh_pkey", c_int, c_void_p, c_void_p),
    ("SSL_CTX_set_alpn_select_cb", None, c_void_p, c_void_p, c_void_p),
    ("SSL_CTX_set_timeout", c_long, c_void_p, c_long),
    ("SSL_CTX_get_timeout", c_long, c_void_p),
    ("SSL_CTX_set_session_id_context", c_int, c_void_p, c_void_p, c_uint),
    ("SSL_CTX_remove_session", c_int, c_void_p, c_void_p),
    ("SSL_CTX_set_info_callback", None, c_void_p, c_void_p),
    ("SSL_set_info_callback", None, c_void_p, c_void_p),
    ("SSL_CONF_CTX_new", c_void_p),
    ("SSL_CONF_CTX_free", None, c_void_p),
    ("SSL_CONF_CTX_set_flags", c_uint, c_void_p, c_uint),
    ("SSL_CONF_CTX_set_ssl_ctx", None, c_void_p, c_void_p),
    ("SSL_CONF_cmd", c_int, c_void_p, c_char_p, c_char_p),
    ("SSL_CONF_cmd_value_type", c_int, c_void_p, c_char_p),
    ("SSL_CONF_CTX_finish", c_int, c_void_p),
    ("SSL_get_SSL_CTX", c_void_p, c_void_p),
    ("SSL_do_handshake", c_int, c_void_p),
    ("SSL_get_error", c_int, c_void_p, c_int),
    ("SSL_in_init", c_int, c_void_p),
    ("SSL_get_shutdown", c_int, c_void_p),
    ("SSL_set_shutdown", None, c_void_p, c_int),
    ("SSL_set_quiet_shutdown", None, c_void_p, c_int),
    ("SSL_version", c_int, c_void_p),
    ("SSL_get_options", c_uint64, c_void_p),
    ("SSL_get_verify_result", c_long, c_void_p),
    ("SSL_get1_peer_certificate", c_void_p, c_void_p),
    ("SSL_get_current_cipher", c_void_p, c_void_p),
    ("SSL_CIPHER_get_name", c_char_p, c_void_p),
    ("SSL_get_version", c_char_p, c_void_p),
    ("SSL_get0_alpn_selected", None, c_void_p, POINTER(c_void_p), POINTER(c_uint)),
    ("SSL_get_certificate", c_void_p, c_void_p),
    ("SSL_get_session", c_void_p, c_void_p),
    ("SSL_get_servername", c_char_p, c_void_p, c_int),
    ("SSL_session_reused", c_int, c_void_p),
    ("SSL_set_ex_data", c_int, c_void_p, c_int, c_void_p),
    ("SSL_get_ex_data", c_void_p, c_void_p, c_int),
    ("SSL_SESSION_get_id", c_void_p, c_void_p, POINTER(c_uint)),
    ("SSL_SESSION_get_time", c_long, c_void_p),
    ("SSL_SESSION_set_time", c_long, c_void_p, c_long),
    ("SSL_SESSION_get_timeout", c_long, c_void_p),
    ("SSL_SESSION_set_timeout", c_long, c_void_p, c_long),
    ("SSL_SESSION_set1_id_context", c_int, c_void_p, c_void_p, c_uint),
    ("SSL_SESSION_free", None, c_void_p),
]

for _name, _restype, *_argtypes in _LIBCRYPTO:
    _declare(crypto, _name, _restype, *_argtypes)
for _name, _restype, *_argtypes in _LIBSSL:
    _declare(libssl, _name, _restype, *_argtypes)

if crypto.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
    raise LibsslMismatchError(
        f"mailgate: the OpenSSL library found for ctypes (version number {crypto.OpenSSL_version_num():#x}) "
        f"is not the one Python's ssl module uses ({ssl.OPENSSL_VERSION}, {ssl.OPENSSL_VERSION_NUMBER:#x})"
    )

# Error texts for every library, as nginx's startup loads them (OpenSSL otherwise loads the SSL library's
# only with the first SSL_CTX, and `reason(1046)` would stand for `sslv3 alert certificate unknown`).
_OPENSSL_INIT_LOAD_CRYPTO_STRINGS = 0x00000002
_OPENSSL_INIT_LOAD_SSL_STRINGS = 0x00200000
libssl.OPENSSL_init_ssl(_OPENSSL_INIT_LOAD_CRYPTO_STRINGS | _OPENSSL_INIT_LOAD_SSL_STRINGS, None)

# ---------------------------------------------------------------------------------------------------------
# Constants (OpenSSL 3.0 headers)

SSL_CTRL_MODE = 33
SSL_CTRL_SET_READ_AHEAD = 41
SSL_CTRL_SET_SESS_CACHE_SIZE = 42
SSL_CTRL_GET_SESS_CACHE_SIZE = 43
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
SSL_CTRL_CHAIN = 88
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_CTRL_GET_MIN_PROTO_VERSION = 130
SSL_CTRL_GET_MAX_PROTO_VERSION = 131

SSL_MODE_AUTO_RETRY = 0x4
SSL_MODE_NO_AUTO_CHAIN = 0x8
SSL_MODE_RELEASE_BUFFERS = 0x10

SSL_OP_IGNORE_UNEXPECTED_EOF = 1 << 7
SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS = 1 << 11
SSL_OP_NO_TICKET = 1 << 14
SSL_OP_NO_COMPRESSION = 1 << 17
SSL_OP_CIPHER_SERVER_PREFERENCE = 1 << 22
SSL_OP_NO_ANTI_REPLAY = 1 << 24
SSL_OP_NO_SSLv3 = 1 << 25
SSL_OP_NO_TLSv1 = 1 << 26
SSL_OP_NO_TLSv1_2 = 1 << 27
SSL_OP_NO_TLSv1_1 = 1 << 28
SSL_OP_NO_TLSv1_3 = 1 << 29
SSL_OP_NO_RENEGOTIATION = 1 << 30
SSL_OP_ALL_BITS = (1 << 64) - 1

TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304

SSL_VERIFY_PEER = 0x01

SSL_SESS_CACHE_OFF = 0x0
SSL_SESS_CACHE_SERVER = 0x2
SSL_SESS_CACHE_NO_AUTO_CLEAR = 0x80
SSL_SESS_CACHE_NO_INTERNAL_LOOKUP = 0x100
SSL_SESS_CACHE_NO_INTERNAL_STORE = 0x200
SSL_SESS_CACHE_NO_INTERNAL = SSL_SESS_CACHE_NO_INTERNAL_LOOKUP | SSL_SESS_CACHE_NO_INTERNAL_STORE

SSL_CB_ACCEPT_LOOP = 0x2001
SSL_CB_READ = 0x04
SSL_CB_ALERT = 0x4000
SSL3_AL_FATAL = 2
SSL_AD_REASON_OFFSET = 1000  # the reason code of a received alert is this plus the alert's number

SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6

SSL_SENT_SHUTDOWN = 1
SSL_RECEIVED_SHUTDOWN = 2

ERR_LIB_SSL = 20

SSL_TLSEXT_ERR_OK = 0
SSL_TLSEXT_ERR_ALERT_FATAL = 2
TLSEXT_NAMETYPE_HOST_NAME = 0

SSL_CONF_FLAG_FILE = 0x2
SSL_CONF_FLAG_CLIENT = 0x4
SSL_CONF_FLAG_SERVER = 0x8
SSL_CONF_FLAG_SHOW_ERRORS = 0x10
SSL_CONF_FLAG_CERTIFICATE = 0x20
SSL_CONF_TYPE_FILE = 0x2
SSL_CONF_TYPE_DIR = 0x3

X509_V_OK = 0
X509_V_FLAG_CRL_CHECK = 0x4
X509_V_FLAG_CRL_CHECK_ALL = 0x8

# XN_FLAG_RFC2253 = ASN1_STRFLGS_RFC2253 | SEP_COMMA_PLUS | DN_REV | DUMP_UNKNOWN_FIELDS
XN_FLAG_RFC2253 = 0x317 | (1 << 16) | (1 << 20) | (1 << 24)

BIO_CTRL_RESET = 1
BIO_CTRL_PENDING = 10

ERR_LIB_PEM = 9
PEM_R_NO_START_LINE = 108
OSSL_STORE_INFO_PKEY = 4

EVP_PKEY_RSA = 6
EVP_PKEY_DSA = 116
EVP_PKEY_EC = 408

EVP_MAX_MD_SIZE = 64
CRYPTO_EX_INDEX_SSL = 0

# ---------------------------------------------------------------------------------------------------------
# Callback types

VerifyCallback = CFUNCTYPE(c_int, c_int, c_void_p)
PemPasswordCallback = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_void_p)


def pointer_of(callback: Any) -> int:
    """The C function pointer of a ctypes callback object (the caller keeps the object alive)."""
    address = ctypes.cast(callback, c_void_p).value
    assert address is not None
    return address


# ---------------------------------------------------------------------------------------------------------
# Python objects -> OpenSSL pointers

# CPython's PySSLContext starts {PyObject_HEAD; SSL_CTX *ctx; ...} and PySSLSocket starts
# {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...} (Modules/_ssl.c, 3.11 to 3.14).
_HEAD_SIZE = object.__basicsize__
_POINTER_SIZE = ctypes.sizeof(c_void_p)


def ssl_ctx_of(context: ssl.SSLContext) -> int:
    """The `SSL_CTX*` of a stdlib context; checked against the options Python itself reports."""
    address = c_void_p.from_address(id(context) + _HEAD_SIZE).value
    if not address or libssl.SSL_CTX_get_options(address) != int(context.options):
        raise LibsslMismatchError("mailgate: cannot find the SSL_CTX of an ssl.SSLContext on this Python")
    return address


def ssl_of(ssl_object: ssl.SSLObject) -> int:
    """The `SSL*` of a stdlib SSLObject (as asyncio and uvloop give per connection)."""
    inner = ssl_object._sslobj  # type: ignore[attr-defined]
    address = c_void_p.from_address(id(inner) + _HEAD_SIZE + _POINTER_SIZE).value
    if not address or libssl.SSL_get_SSL_CTX(address) != ssl_ctx_of(ssl_object.context):
        raise LibsslMismatchError("mailgate: cannot find the SSL of an ssl.SSLObject on this Python")
    return address


# ---------------------------------------------------------------------------------------------------------
# Small helpers over the raw calls


@dataclass(frozen=True)
class QueuedError:
    """One entry of OpenSSL's error queue: its packed code and nginx's text for it."""

    code: int
    text: str  # `error:0A00010B:SSL routines::wrong version number`, `:data` appended when there is some

    @property
    def reason(self) -> int:
        """OpenSSL's ERR_GET_REASON (whatever the library, as nginx compares it)."""
        if self.code & _ERR_SYSTEM_FLAG:
            return self.code & _ERR_SYSTEM_MASK
        return self.code & _ERR_REASON_MASK


_ERR_SYSTEM_FLAG = 0x80000000
_ERR_SYSTEM_MASK = 0x7FFFFFFF
_ERR_REASON_MASK = 0x7FFFFF
_ERR_LIB_OFFSET = 23
_ERR_TXT_STRING = 0x02


def error_string(code: int) -> str:
    """ERR_error_string_n: `error:0A000416:SSL routines::sslv3 alert certificate unknown`."""
    buffer = ctypes.create_string_buffer(256)
    crypto.ERR_error_string_n(code, buffer, len(buffer))
    return buffer.value.decode("utf-8", "replace")


def ssl_error_code(reason: int) -> int:
    """The packed code of a reason of the SSL library (ERR_PACK(ERR_LIB_SSL, 0, reason))."""
    return (ERR_LIB_SSL << _ERR_LIB_OFFSET) | (reason & _ERR_REASON_MASK)


def _queued_error(code: int, data: c_char_p, flags: c_int) -> QueuedError:
    text = error_string(code)
    # Only text data (ERR_TXT_STRING) is worth showing, as nginx's ngx_ssl_error decides.
    if data.value and flags.value & _ERR_TXT_STRING:
        text += ":" + data.value.decode("utf-8", "replace")
    return QueuedError(code, text)


def take_errors() -> list[QueuedError]:
    """Every error queued in this thread, oldest first, emptying the queue (as nginx's ngx_ssl_error)."""
    errors: list[QueuedError] = []
    while True:
        data = c_char_p()
        flags = c_int()
        code = crypto.ERR_peek_error_data(ctypes.byref(data), ctypes.byref(flags))
        if code == 0:
            return errors
        errors.append(_queued_error(code, data, flags))
        crypto.ERR_get_error()


def peek_errors() -> list[QueuedError]:
    """The oldest and the newest queued error (one if they are the same), leaving the queue as it is.

    OpenSSL can show no other entry without taking it, and OpenSSL itself still needs the queue
    (SSL_get_error reads it) when a callback looks.
    """
    data, flags = c_char_p(), c_int()
    first = crypto.ERR_peek_error_data(ctypes.byref(data), ctypes.byref(flags))
    if first == 0:
        return []
    errors = [_queued_error(first, data, flags)]
    data, flags = c_char_p(), c_int()
    last = crypto.ERR_peek_last_error_data(ctypes.byref(data), ctypes.byref(flags))
    newest = _queued_error(last, data, flags)
    if newest != errors[0]:
        errors.append(newest)
    return errors


def errors_text(errors: list[QueuedError]) -> str:
    """nginx's ` (SSL: ...)` for queued errors (entries joined by a space); "" for none."""
    if not errors:
        return ""
    return " (SSL: " + " ".join(error.text for error in errors) + ")"


def error_suffix() -> str:
    """nginx's ` (SSL: error:...)` text for the queued OpenSSL errors, emptying the queue; "" if none."""
    return errors_text(take_errors())


def last_error_is_pem_no_start_line() -> bool:
    """True when the newest queued error is PEM's "no start line" (the end of a PEM stream)."""
    code = crypto.ERR_peek_last_error()
    if code & 0x80000000:  # ERR_SYSTEM_FLAG: a system error, not a library one
        return False
    return bool((code >> 23) & 0xFF == ERR_LIB_PEM and code & 0x7FFFFF == PEM_R_NO_START_LINE)


def bio_contents(bio: int) -> bytes:
    """Everything pending in a memory BIO."""
    pending = crypto.BIO_ctrl(bio, BIO_CTRL_PENDING, 0, None)
    if pending <= 0:
        return b""
    buffer = ctypes.create_string_buffer(pending)
    read = crypto.BIO_read(bio, buffer, pending)
    return buffer.raw[: max(read, 0)]


def verify_error_string(code: int) -> str:
    text = crypto.X509_verify_cert_error_string(code)
    return text.decode("utf-8", "replace") if text else f"error number {code}"
