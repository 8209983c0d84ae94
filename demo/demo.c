/* demo: a little word counter with a call tree worth tracing.
 *
 *   main ─► count_words ─► next_word ─► is_space
 *                       └► remember  ─► hash
 */
#include <stdio.h>
#include <string.h>

#define TRACED __attribute__((noipa))

static const char text[] =
    "the quick brown fox jumps over the lazy dog";

static unsigned seen[1021];

TRACED int is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\0';
}

TRACED unsigned hash(const char *word, size_t len)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)word[i]) * 16777619u;
    return h;
}

TRACED int remember(const char *word, size_t len)
{
    unsigned slot = hash(word, len) % 1021;
    return ++seen[slot] == 1;
}

TRACED const char *next_word(const char *p, size_t *len)
{
    while (*p && is_space(*p))
        p++;
    *len = 0;
    while (!is_space(p[*len]))
        (*len)++;
    return p;
}

TRACED int count_words(const char *s, int *unique)
{
    int words = 0;
    size_t len;
    for (const char *p = next_word(s, &len); len; p = next_word(p + len, &len)) {
        words++;
        *unique += remember(p, len);
    }
    return words;
}

int main(void)
{
    int unique = 0;
    int words = count_words(text, &unique);
    printf("%d words, %d different\n", words, unique);
    return 0;
}
