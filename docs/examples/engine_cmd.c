/* An engine in C: the gradients of the article's model (y = w*x + b, mean squared error) over
 * sgdtrace's JSON-lines protocol; sgdtrace's own optimizer does the update.
 *
 *     cc -O2 -o engine_c docs/examples/engine_cmd.c -lm
 *     sgdtrace run --engine-cmd ./engine_c --momentum 0.9
 *
 * It reads the few fields it needs from each request line with strstr and strtod (every request
 * is one JSON object on one line), computes in double precision and writes each number with
 * %.17g, which reads back as the same double. It serves the article's model (one x column). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE (1 << 24)
#define MAX_SAMPLES (1 << 20)

static char line[MAX_LINE];
static double xs[MAX_SAMPLES], ys[MAX_SAMPLES];

/* The number after "key": in s (a number, or one of the strings "inf", "-inf", "nan"). */
static double number_after(const char *s, const char *key) {
    const char *p = strstr(s, key);
    if (!p) return 0.0;
    p += strlen(key);
    while (*p == ' ' || *p == ':' || *p == '"') p++;
    return strtod(p, NULL); /* strtod reads inf, -inf and nan too */
}

/* The numbers of the (nested) list after "key": in s, into out; how many. */
static int numbers_after(const char *s, const char *key, double *out, int max) {
    const char *p = strstr(s, key);
    int n = 0, depth = 0;
    if (!p) return 0;
    p += strlen(key);
    while (*p && *p != '[') p++;
    for (; *p; p++) {
        if (*p == '[') depth++;
        else if (*p == ']') { if (--depth == 0) break; }
        else if (*p == ',' || *p == ' ' || *p == '"') continue;
        else {
            char *end;
            double v = strtod(p, &end);
            if (end == p) return -1;
            if (n < max) out[n++] = v;
            p = end - 1;
        }
    }
    return n;
}

int main(void) {
    while (fgets(line, sizeof line, stdin)) {
        if (strstr(line, "\"op\":\"start\"")) {
            if (strstr(line, "\"w\":[]") == NULL) { /* D features: not this engine's */
                printf("{\"error\":\"this C engine serves the article's model (one x column)\"}\n");
            } else {
                printf("{\"parts\":[\"gradients\"]}\n");
            }
        } else if (strstr(line, "\"op\":\"gradients\"")) {
            double w = number_after(line, "\"w\""), b = number_after(line, "\"b\"");
            int n = numbers_after(line, "\"x\"", xs, MAX_SAMPLES);
            int m = numbers_after(line, "\"y\"", ys, MAX_SAMPLES);
            if (n <= 0 || n != m) {
                printf("{\"error\":\"could not read x and y\"}\n");
            } else {
                double loss = 0, gw = 0, gb = 0;
                for (int i = 0; i < n; i++) {
                    double d = w * xs[i] + b - ys[i];
                    loss += d * d;
                    gw += d * xs[i];
                    gb += d;
                }
                printf("{\"loss\":%.17g,\"grads\":{\"w\":%.17g,\"b\":%.17g}}\n", loss / n, 2 * gw / n, 2 * gb / n);
            }
        } else {
            break; /* stop */
        }
        fflush(stdout);
    }
    return 0;
}
