"""Editor support: the language server (`intro lsp`), a pygments lexer and the TextMate grammar.

Everything here reads the language from the one lark grammar (`compiler/grammar/intro.lark`) and the
compiler's builtin table, so highlighting, completion and the compiler cannot drift apart. Only
`intro.editor.server` needs pygls and only `intro.editor.lexer` needs pygments.
"""
