/* podnet-shim: the plugin executable a container runtime runs, as a small native program.
 *
 * It does what podnet/daemon/shim.py does, in the same wire format: env and stdin to the podnet
 * daemon's unix socket, the daemon's answer out, the daemon's exit code. The installed plugin
 * names (podnet-bridge, podnet-routed, ...) are links to this one binary, told apart by the base
 * name of argv[0]. Python's start-up alone costs more than the daemon's whole answer, so the
 * shim a runtime executes is native; everything that needs judgement stays in Python:
 *
 * - whenever the daemon ran nothing (no socket, refused, oversized input) the Python shim next
 *   to this binary (podnet-py-NAME) is exec'd with --in-process and runs the plugin itself;
 * - when the daemon took the request and broke before answering, it is exec'd with
 *   --after-broken, and applies shim.py's rules for a request that may have partly happened.
 * Either way the stdin already read is handed over in a memfd.
 *
 * The wire format and every shared constant come from podnet/daemon/protocol.py (and the VERSION
 * answer from podnet/cni/spec_versions.py): podnet.daemon.native.build passes them as -D
 * definitions, so there is one definition of each. Build only through that module.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if !defined(PN_REQUEST_MAGIC) || !defined(PN_RESPONSE_MAGIC) || !defined(PN_MAX_STDIN) ||            \
    !defined(PN_MAX_ENV_BYTES) || !defined(PN_MAX_FIELDS) || !defined(PN_MAX_RESPONSE_BODY) ||       \
    !defined(PN_DEFAULT_SOCKET) || !defined(PN_VERSION_JSON) || !defined(PN_CONNECT_TIMEOUT) ||      \
    !defined(PN_DEFAULT_TIMEOUT) || !defined(PN_MAX_TIMEOUT) || !defined(PN_KIND_RAN) ||             \
    !defined(PN_KIND_REFUSED) || !defined(PN_SOCKET_KEY) || !defined(PN_SUN_PATH_MAX)
#error "build with podnet.daemon.native.build: it passes the wire format from protocol.py"
#endif

#define HEADER_SIZE 8
#define SUN_PATH_MAX PN_SUN_PATH_MAX
#define NS_GET_NSTYPE 0xB703
#define CLONE_NEWNET_FLAG 0x40000000

extern char **environ;

static const char *plugin = "podnet-shim";

/* ---- output ------------------------------------------------------------------------------ */

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nobody reads it any more: nothing better to do */
        buf += n;
        len -= (size_t)n;
    }
}

static void say(const char *text) {
    char line[4096];
    int n = snprintf(line, sizeof line, "%s: %s\n", plugin, text);
    if (n > 0)
        write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* A CNI error on stdout (shim.py _fail): control characters become spaces, '\' and '"' are
 * escaped, so any message is valid JSON. */
static int fail(const char *command, const char *msg, int code) {
    size_t len = strlen(msg);
    char *out = malloc(len * 2 + 128);
    if (out == NULL)
        return 1;
    size_t n = (size_t)sprintf(out, "{\"cniVersion\": \"1.0.0\", \"code\": %d, \"msg\": \"", code);
    for (const unsigned char *c = (const unsigned char *)msg; *c; c++) {
        if (*c == '\\' || *c == '"')
            out[n++] = '\\';
        out[n++] = *c < ' ' ? ' ' : (char)*c;
    }
    n += (size_t)sprintf(out + n, "\"}\n");
    write_all(1, out, n);
    free(out);
    char line[1024];
    snprintf(line, sizeof line, "%s failed: %s", command, msg);
    say(line);
    return 1;
}

/* ---- the environment knobs (shim.py _socket_path, _timeout, _redo) ------------------------ */

/* Python's repr() of a plain ASCII value; other bytes as \xNN (valid JSON, never raw). */
static void quoted(char *dst, size_t cap, const char *value) {
    size_t n = 0;
    int dq = strchr(value, '\'') != NULL && strchr(value, '"') == NULL;
    char q = dq ? '"' : '\'';
    dst[n++] = q;
    for (const unsigned char *c = (const unsigned char *)value; *c && n + 6 < cap; c++) {
        if (*c == '\\' || *c == (unsigned char)q)
            n += (size_t)snprintf(dst + n, cap - n, "\\%c", *c);
        else if (*c == '\t' || *c == '\n' || *c == '\r')
            n += (size_t)snprintf(dst + n, cap - n, "\\%c", *c == '\t' ? 't' : *c == '\n' ? 'n' : 'r');
        else if (*c < ' ' || *c >= 0x7f)
            n += (size_t)snprintf(dst + n, cap - n, "\\x%02x", *c);
        else
            dst[n++] = (char)*c;
    }
    dst[n++] = q;
    dst[n] = '\0';
}

static int bad_value(const char *command, const char *name, const char *value, const char *want, int code) {
    char shown[600], msg[900];
    quoted(shown, sizeof shown, value);
    snprintf(msg, sizeof msg, "invalid %s=%s: %s", name, shown, want);
    return fail(command, msg, code);
}

static int bad_knob(const char *command, const char *name, const char *value, const char *want) {
    return bad_value(command, name, value, want, 4);
}

static int socket_path_ok(const char *path) { return path[0] == '/' && strlen(path) <= SUN_PATH_MAX; }

/* A decimal number of seconds (shim.py _timeout accepts the same: digits, one optional point). */
static int parse_timeout(const char *raw, double *out) {
    const char *c = raw;
    int digits = 0, points = 0;
    for (; *c; c++) {
        if (*c >= '0' && *c <= '9')
            digits++;
        else if (*c == '.' && points == 0)
            points++;
        else
            return 0;
    }
    if (digits == 0 || digits > 32)
        return 0;
    *out = strtod(raw, NULL);
    return *out > 0 && *out <= PN_MAX_TIMEOUT;
}

static int parse_redo(const char *raw, int *redo) {
    static const char *const yes[] = {"1", "true", "yes"}, *const no[] = {"0", "false", "no"};
    if (raw[0] == '\0') {
        *redo = 1;
        return 1;
    }
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(raw, no[i]) == 0) {
            *redo = 0;
            return 1;
        }
        if (strcasecmp(raw, yes[i]) == 0) {
            *redo = 1;
            return 1;
        }
    }
    return 0;
}

static const char *env_or_empty(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

/* ---- stdin and the network config --------------------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL)
        return 0;
    b->data = d;
    b->cap = cap;
    return 1;
}

/* Reads stdin up to one byte over the limit (then the skel reports the oversized input). */
static int read_stdin(struct buf *in) {
    while (in->len <= PN_MAX_STDIN) {
        if (!buf_reserve(in, 1 << 16))
            return 0;
        ssize_t n = read(0, in->data + in->len, 1 << 16);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n == 0 || errno == EBADF; /* no stdin at all reads as empty, like Python */
        in->len += (size_t)n;
    }
    return 1;
}

/* Skips one JSON value starting at s[*i] (strings with escapes, nested objects and arrays; the
 * rest is skipped to the next delimiter). Returns 0 on malformed input. */
static int skip_ws(const char *s, size_t len, size_t *i) {
    while (*i < len && (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '\n' || s[*i] == '\r'))
        (*i)++;
    return *i < len;
}

static int skip_string(const char *s, size_t len, size_t *i) {
    for ((*i)++; *i < len; (*i)++) {
        if (s[*i] == '\\')
            (*i)++;
        else if (s[*i] == '"') {
            (*i)++;
            return 1;
        }
    }
    return 0;
}

static int skip_value(const char *s, size_t len, size_t *i) {
    int depth = 0;
    do {
        if (!skip_ws(s, len, i))
            return 0;
        char c = s[*i];
        if (c == '"') {
            if (!skip_string(s, len, i))
                return 0;
        } else if (c == '{' || c == '[') {
            depth++;
            (*i)++;
        } else if (c == '}' || c == ']') {
            if (--depth < 0)
                return 0;
            (*i)++;
        } else if (c == ',' || c == ':') {
            if (depth == 0)
                return 0;
            (*i)++;
        } else {
            while (*i < len && !strchr(",:]} \t\r\n", s[*i]))
                (*i)++;
        }
    } while (depth > 0);
    return 1;
}

/* Decodes the JSON string at s[*i] into out (at most cap-1 bytes). Escapes: \" \\ \/ and \u00XX
 * below 0x80; anything else (and an embedded NUL) makes it unusable (returns 0). */
static int read_json_string(const char *s, size_t len, size_t *i, char *out, size_t cap) {
    size_t n = 0;
    for ((*i)++; *i < len; (*i)++) {
        char c = s[*i];
        if (c == '"') {
            (*i)++;
            out[n] = '\0';
            return 1;
        }
        if (c == '\\') {
            if (++(*i) >= len)
                return 0;
            c = s[*i];
            if (c == 'u') {
                unsigned v;
                if (*i + 4 >= len || sscanf(s + *i + 1, "%4x", &v) != 1 || v == 0 || v >= 0x80)
                    return 0;
                c = (char)v;
                *i += 4;
            } else if (c != '"' && c != '\\' && c != '/')
                return 0;
        }
        if ((unsigned char)c < ' ' || n + 1 >= cap)
            return 0;
        out[n++] = c;
    }
    return 0;
}

/* The socket named by the config's top-level PN_SOCKET_KEY: 1 found (out holds it), 0 not there
 * (or stdin is not a JSON object: the plugin reports that), -1 there but not a usable string. */
static int config_socket(const struct buf *in, char *out, size_t cap) {
    static const char key[] = "\"" PN_SOCKET_KEY "\"";
    const char *s = in->data;
    size_t len = in->len, i = 0;
    int found = 0;
    if (len == 0 || memmem(s, len, key, sizeof key - 1) == NULL)
        return 0; /* the common case costs one scan */
    if (!skip_ws(s, len, &i) || s[i++] != '{')
        return 0;
    for (;;) {
        if (!skip_ws(s, len, &i))
            return 0;
        if (s[i] == '}')
            return found;
        if (s[i] != '"')
            return 0;
        size_t start = i;
        if (!skip_string(s, len, &i))
            return 0;
        int ours = i - start == sizeof key - 1 && memcmp(s + start, key, sizeof key - 1) == 0;
        if (!skip_ws(s, len, &i) || s[i++] != ':' || !skip_ws(s, len, &i))
            return 0;
        if (ours) {
            /* Later duplicates win, as with Python's json. */
            found = s[i] == '"' && read_json_string(s, len, &i, out, cap) ? 1 : -1;
            if (found < 0 && !skip_value(s, len, &i))
                return 0;
        } else if (!skip_value(s, len, &i))
            return 0;
        if (!skip_ws(s, len, &i))
            return 0;
        if (s[i] == ',')
            i++;
        else if (s[i] != '}')
            return 0;
    }
}

/* ---- handing over to the Python shim ------------------------------------------------------ */

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* Exec's podnet-py-NAME next to this binary with the stdin already read (``in``; NULL: stdin not
 * touched, the whole call is the Python shim's); returns only on error. */
static int hand_over(const char *command, const struct buf *in, const char *mode, const char *why) {
    char self[PATH_MAX], target[PATH_MAX + 64], msg[PATH_MAX + 256];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    const char *base = strncmp(plugin, "podnet-", 7) == 0 ? plugin + 7 : plugin;
    if (n <= 0)
        return fail(command, "cannot find the Python shim: /proc/self/exe is unreadable", 999);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL)
        return fail(command, "cannot find the Python shim: /proc/self/exe is not a path", 999);
    *slash = '\0';
    snprintf(target, sizeof target, "%s/podnet-py-%s", self, base);
    if (in != NULL) {
        int fd = memfd_create("podnet-stdin", 0);
        if (fd < 0 || (in->len && write(fd, in->data, in->len) != (ssize_t)in->len) ||
            lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) {
            snprintf(msg, sizeof msg, "cannot hand stdin to the Python shim: %s", strerror(errno));
            return fail(command, msg, 999);
        }
        if (fd != 0)
            close(fd);
    }
    signal(SIGPIPE, SIG_DFL);
    char *const argv[] = {target, (char *)mode, (char *)why, NULL};
    execv(target, argv);
    snprintf(msg, sizeof msg, "cannot run the in-process fallback %s: %s", target, strerror(errno));
    return fail(command, msg, 999);
}

/* ---- the network namespace -------------------------------------------------------------- */

/* CNI_NETNS opened here, in the caller's mount namespace, for the daemon (which may live in
 * another one). As kernel/netns.py does: O_PATH first and fstat, so a FIFO, tty or device is
 * never opened; then the same inode reopened through /proc/self/fd and NS_GET_NSTYPE checked.
 * -1 when it cannot be opened or is not a network namespace. */
static int open_netns(const char *path) {
    char proc[64];
    struct stat st;
    int pfd = open(path, O_PATH | O_CLOEXEC);
    if (pfd < 0)
        return -1;
    int fd = -1;
    if (fstat(pfd, &st) == 0 && S_ISREG(st.st_mode)) {
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", pfd);
        fd = open(proc, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    }
    close(pfd);
    if (fd >= 0 && ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET_FLAG) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* ---- the request frame --------------------------------------------------------------------- */

static void put_u32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int append_field(struct buf *f, const char *data, size_t len) {
    if (!buf_reserve(f, 4 + len))
        return 0;
    put_u32(f->data + f->len, (uint32_t)len);
    if (len)
        memcpy(f->data + f->len + 4, data, len);
    f->len += 4 + len;
    return 1;
}

/* Same key earlier in environ: Python's os.environ keeps the first, and so does this. */
static int seen_before(char **env, char **entry) {
    size_t keylen = (size_t)(strchr(*entry, '=') - *entry) + 1;
    for (char **e = env; e < entry; e++)
        if (strncmp(*e, *entry, keylen) == 0)
            return 1;
    return 0;
}

/* The request frame; 0 when the environment is over the wire format's limits (the Python
 * shim then runs the plugin in-process, and the skel says what is wrong). */
static int build_request(struct buf *f, const struct buf *in) {
    size_t fields = 2, env_bytes = 0;
    f->len = HEADER_SIZE + 4;
    if (!buf_reserve(f, f->len) || !append_field(f, plugin, strlen(plugin)) ||
        !append_field(f, in->len ? in->data : "", in->len))
        return 0;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || eq == *e || seen_before(environ, e))
            continue;
        size_t len = strlen(*e);
        env_bytes += len;
        if (++fields > PN_MAX_FIELDS + 2 || env_bytes > PN_MAX_ENV_BYTES || !append_field(f, *e, len))
            return 0;
    }
    memcpy(f->data, PN_REQUEST_MAGIC, 4);
    put_u32(f->data + 4, (uint32_t)(f->len - HEADER_SIZE));
    put_u32(f->data + HEADER_SIZE, (uint32_t)fields);
    return 1;
}

/* ---- the exchange ------------------------------------------------------------------------ */

enum outcome { SENT, UNSENT };

static void set_timeout(int sock, int opt, double seconds) {
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};
    setsockopt(sock, SOL_SOCKET, opt, &tv, sizeof tv);
}

/* Connects and sends the whole frame, the netns fd (if any) with its first byte. UNSENT unless
 * every byte was accepted: only then can the daemon have run anything. */
static enum outcome send_request(int sock, const char *path, const struct buf *f, int netns_fd,
                                 char *why, size_t whylen) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, strlen(path) + 1);
    set_timeout(sock, SO_SNDTIMEO, PN_CONNECT_TIMEOUT);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        snprintf(why, whylen, "daemon not reachable at %s: %s", path, strerror(errno));
        return UNSENT;
    }
    size_t off = 0;
    while (off < f->len) {
        struct iovec iov = {f->data + off, f->len - off};
        union {
            struct cmsghdr align;
            char space[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (off == 0 && netns_fd >= 0) {
            memset(&ctl, 0, sizeof ctl);
            msg.msg_control = ctl.space;
            msg.msg_controllen = sizeof ctl.space;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &netns_fd, sizeof(int));
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(why, whylen, "daemon not reachable at %s: %s", path, strerror(errno));
            return UNSENT;
        }
        off += (size_t)n;
    }
    return SENT;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Receives exactly len bytes by the deadline: 1 ok, 0 broken (why says how), -1 timed out. */
static int recv_exact(int sock, char *dst, size_t len, double deadline, char *why, size_t whylen) {
    size_t got = 0;
    while (got < len) {
        double left = deadline - now();
        struct pollfd p = {.fd = sock, .events = POLLIN};
        if (left <= 0)
            return -1;
        int r = poll(&p, 1, left > 1e6 ? 1000000000 : (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            continue; /* re-check the deadline */
        ssize_t n = r < 0 ? -1 : recv(sock, dst + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(why, whylen, "connection to the daemon broke mid-request: %s",
                     n == 0 ? "the daemon closed the connection before answering" : strerror(errno));
            return 0;
        }
        got += (size_t)n;
    }
    return 1;
}

struct answer {
    char *body;
    const char *kind, *out, *err;
    size_t kind_len, out_len, err_len;
    int code;
};

/* protocol.decode_response: exactly four fields, a known kind, an exit code of 1-4 characters. */
static int decode_answer(struct answer *a, size_t size) {
    const unsigned char *b = (const unsigned char *)a->body;
    const char *field[4];
    size_t flen[4], pos = 4;
    if (size < 4 || get_u32(b) != 4)
        return 0;
    for (int i = 0; i < 4; i++) {
        if (pos + 4 > size)
            return 0;
        flen[i] = get_u32(b + pos);
        pos += 4;
        if (flen[i] > size - pos)
            return 0;
        field[i] = a->body + pos;
        pos += flen[i];
    }
    if (pos != size || flen[1] < 1 || flen[1] > 4)
        return 0;
    a->kind = field[0];
    a->kind_len = flen[0];
    if (!(flen[0] == strlen(PN_KIND_RAN) && memcmp(field[0], PN_KIND_RAN, flen[0]) == 0) &&
        !(flen[0] == strlen(PN_KIND_REFUSED) && memcmp(field[0], PN_KIND_REFUSED, flen[0]) == 0))
        return 0;
    char code[5] = {0};
    memcpy(code, field[1], flen[1]);
    size_t start = code[0] == '-';
    if (code[start] == '\0' || strspn(code + start, "0123456789") != strlen(code + start))
        return 0;
    a->code = atoi(code);
    a->out = field[2];
    a->out_len = flen[2];
    a->err = field[3];
    a->err_len = flen[3];
    return 1;
}

/* 1 answered, 0 broken, -1 timed out. */
static int read_answer(int sock, struct answer *a, double timeout, char *why, size_t whylen) {
    unsigned char header[HEADER_SIZE];
    double deadline = now() + timeout;
    int r = recv_exact(sock, (char *)header, HEADER_SIZE, deadline, why, whylen);
    if (r != 1)
        return r;
    uint32_t size = get_u32(header + 4);
    if (memcmp(header, PN_RESPONSE_MAGIC, 4) != 0 || size > PN_MAX_RESPONSE_BODY) {
        snprintf(why, whylen, "connection to the daemon broke mid-request: bad answer header");
        return 0;
    }
    a->body = malloc(size ? size : 1);
    if (a->body == NULL) {
        snprintf(why, whylen, "connection to the daemon broke mid-request: out of memory");
        return 0;
    }
    r = recv_exact(sock, a->body, size, deadline, why, whylen);
    if (r != 1)
        return r;
    if (!decode_answer(a, size)) {
        snprintf(why, whylen, "unreadable answer from the daemon");
        return 0;
    }
    return 1;
}

/* ---- main ---------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    (void)argc;
    if (argv[0] != NULL && argv[0][0] != '\0') {
        const char *slash = strrchr(argv[0], '/');
        plugin = slash ? slash + 1 : argv[0];
    }
    signal(SIGPIPE, SIG_IGN);
    const char *command = env_or_empty("CNI_COMMAND");
    const char *sock_env = env_or_empty("PODNET_SOCKET");
    const char *timeout_raw = env_or_empty("PODNET_SHIM_TIMEOUT");
    double timeout = PN_DEFAULT_TIMEOUT;
    int redo = 1;
    char want[160];
    snprintf(want, sizeof want, "must be an absolute path of at most %d bytes", SUN_PATH_MAX);
    if (sock_env[0] != '\0' && !socket_path_ok(sock_env))
        return bad_knob(command, "PODNET_SOCKET", sock_env, want);
    if (timeout_raw[0] != '\0' && !parse_timeout(timeout_raw, &timeout)) {
        snprintf(want, sizeof want, "must be a number of seconds over 0, at most %g", (double)PN_MAX_TIMEOUT);
        return bad_knob(command, "PODNET_SHIM_TIMEOUT", timeout_raw, want);
    }
    if (!parse_redo(env_or_empty("PODNET_SHIM_REDO"), &redo))
        return bad_knob(command, "PODNET_SHIM_REDO", env_or_empty("PODNET_SHIM_REDO"),
                        "must be 1, true, yes, 0, false or no");
    const char *which = env_or_empty("PODNET_SHIM");
    if (!is(which, "") && !is(which, "native") && !is(which, "python"))
        return bad_knob(command, "PODNET_SHIM", which, "must be native or python");
    if (is(which, "python")) /* the whole call to the Python shim, stdin unread */
        return hand_over(command, NULL, NULL, NULL);
    if (is(command, "VERSION")) {
        write_all(1, PN_VERSION_JSON "\n", sizeof(PN_VERSION_JSON "\n") - 1);
        return 0;
    }
    struct buf in = {0}, frame = {0};
    if (!read_stdin(&in) || in.len > PN_MAX_STDIN || !build_request(&frame, &in))
        return hand_over(command, &in, "--in-process", "");

    char path[SUN_PATH_MAX + 1], conf_path[4096], why[1024];
    snprintf(path, sizeof path, "%s", sock_env[0] ? sock_env : PN_DEFAULT_SOCKET);
    /* The config's socket wins over PODNET_SOCKET: it reaches every call of the network. */
    int from_conf = config_socket(&in, conf_path, sizeof conf_path);
    if (from_conf < 0 || (from_conf > 0 && !socket_path_ok(conf_path)))
        return bad_value(command, PN_SOCKET_KEY, from_conf < 0 ? "" : conf_path, want, 7);
    if (from_conf > 0)
        memcpy(path, conf_path, strlen(conf_path) + 1);

    const char *netns = env_or_empty("CNI_NETNS");
    int netns_fd = netns[0] ? open_netns(netns) : -1;
    /* ADD and CHECK need the namespace: when it cannot be opened here the plugin, run here,
     * says exactly why. DEL goes on without it (the pod may be gone). */
    if (netns[0] && netns_fd < 0 && (is(command, "ADD") || is(command, "CHECK")))
        return hand_over(command, &in, "--in-process", "");

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || send_request(sock, path, &frame, netns_fd, why, sizeof why) == UNSENT)
        return hand_over(command, &in, "--in-process", "");
    if (netns_fd >= 0)
        close(netns_fd);
    free(frame.data);
    struct answer a = {0};
    int r = read_answer(sock, &a, timeout, why, sizeof why);
    if (r < 0)
        return fail(command,
                    "no answer from the podnet daemon in time; it may still be working on the request, "
                    "so it is not repeated",
                    11);
    if (r == 0)
        return hand_over(command, &in, "--after-broken", why);
    if (a.kind_len == strlen(PN_KIND_REFUSED) && memcmp(a.kind, PN_KIND_REFUSED, a.kind_len) == 0) {
        char msg[1200];
        int n = (int)(a.err_len > 900 ? 900 : a.err_len);
        while (n > 0 && strchr(" \t\r\n", a.err[n - 1]))
            n--;
        snprintf(msg, sizeof msg, "daemon refused the request (%.*s); running in-process", n, a.err);
        say(msg);
        return hand_over(command, &in, "--in-process", "");
    }
    write_all(1, a.out, a.out_len);
    write_all(2, a.err, a.err_len);
    return a.code >= 0 ? a.code & 0xFF : 1;
}
